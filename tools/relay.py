"""A byte relay from a TCP address to a unix socket (tests and labs only).

The lab's hosts reach etcd over a unix socket, which no packet filter can cut;
a test that partitions a host from its control plane runs this relay in the
lab's control-plane namespace, so that etcd is also offered on the underlay
(172.30.0.254), where iptables can drop the host's traffic. It relays bytes
as they come (TLS passes through untouched) until either side closes.

Usage:
  python -m tools.relay <HOST:PORT> <UNIX_PATH>
"""

from __future__ import annotations

import socket
import sys
import threading


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(conn: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        conn.close()
        upstream.close()
        return
    pumps = [threading.Thread(target=_pump, args=pair, daemon=True)
             for pair in ((conn, upstream), (upstream, conn))]
    for p in pumps:
        p.start()
    for p in pumps:
        p.join()
    conn.close()
    upstream.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 1
    host, _, port = argv[0].rpartition(":")
    server = socket.create_server((host, int(port)), reuse_port=False)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve, args=(conn, argv[1]), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
