"""calico-ipam: the IPAM service process (the composition root).

Run as `python -m services.ipam`.

Usage:
  calico-ipam [--listen=<ADDRS>] [--etcd-endpoints=<EPS>]

Options:
  --listen=<ADDRS>         Comma-separated host:port or unix:<path> addresses
                           to serve on; else CALICO_IPAM_LISTEN, else
                           CALICO_IPAM_ADDR, else 127.0.0.1:50051.
  --etcd-endpoints=<EPS>   Comma-separated etcd host:port list; else
                           ETCD_ENDPOINTS or ETCD_AUTHORITY, else 127.0.0.1:2379.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from docopt import docopt

from calicopy import config
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import DatastoreUnavailable
from services.ipam.allocator import Ipam
from services.ipam.server import create_server

log = logging.getLogger("calico-ipam")

ETCD_WAIT = 30.0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = docopt(__doc__, argv)
    try:
        listen = config.IPAM_LISTEN.resolve(args["--listen"])
        endpoints = config.ETCD_ENDPOINTS.resolve(args["--etcd-endpoints"])
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1

    store = EtcdStore(endpoints)
    deadline = time.monotonic() + ETCD_WAIT
    while True:
        try:
            store.check()
            break
        except DatastoreUnavailable as exc:
            if time.monotonic() > deadline:
                log.error("%s", exc)
                return 1
            time.sleep(0.5)

    for addr in listen:
        if addr.startswith("unix:") and os.path.exists(addr[len("unix:"):]):
            os.unlink(addr[len("unix:"):])      # left by a previous run
    server, _ = create_server(listen, Ipam(store))
    server.start()
    log.info("IPAM service listening on %s (etcd %s)", ", ".join(listen), store.endpoints)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping")
    server.stop(grace=5).wait()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
