"""Starting and stopping the local processes the stack and the tests need.

Processes are started in their own session with output to a log file and are
stopped by the PID we recorded, never by name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from calicopy import config
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import DatastoreUnavailable
from calicopy.rpc import check_health
from tools import processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], log: Path, env: dict | None = None,
          cwd: Path | None = None, drop_env: str = "") -> subprocess.Popen:
    """``argv`` in a session of its own, output to ``log``, with our
    environment plus ``env`` (less the variables starting with ``drop_env``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not (drop_env and k.startswith(drop_env))}
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**environ, **(env or {})}, cwd=cwd)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; quiet if it is already gone."""
    processes.stop(pid, timeout)
    try:
        os.waitpid(pid, 0)      # reap it if it was our child
    except ChildProcessError:
        pass


def wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen | None,
               log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}:\n"
                               + processes.tail(log))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {log}:\n"
                               + processes.tail(log))
        time.sleep(0.1)


def etcd_ready(client: str, tls=None) -> bool:
    """Whether the etcd at ``client`` (an ETCD_ENDPOINTS entry) answers."""
    store = EtcdStore([config.parse_endpoint(client)], timeout=1.0, tls=tls)
    try:
        store.check()
        return True
    except DatastoreUnavailable:
        return False
    finally:
        store.close()


def etcd_unix_endpoint(data_dir: Path, client_port: int, tls: bool = False) -> str:
    """The unix socket ``start_etcd`` also listens on, as an ETCD_ENDPOINTS entry.

    Processes in other network namespaces (simulated hosts) reach etcd
    through it without any IP route to this namespace. etcd names the socket
    file after the URL's host:port, in its working directory.
    """
    return f"{'unixs' if tls else 'unix'}:{data_dir.parent}/localhost:{client_port}"


def start_etcd(data_dir: Path, client_port: int, peer_port: int, log: Path, tls=None,
               admin=None) -> subprocess.Popen:
    """An etcd on loopback (and a unix socket next to ``data_dir``). With
    ``tls`` (its server certificate, calicopy.tls.TlsFiles) clients must
    present a certificate signed by the same CA, whose common name is their
    etcd user; with ``admin`` too (the admin certificate), etcd's
    authentication is switched on with calico-py's users and roles
    (calicopy.datastore.etcd_auth), admin being root. History is compacted
    every hour (its space is bounded)."""
    scheme = "https" if tls else "http"
    client = f"{scheme}://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    listen = f"{client},{'unixs' if tls else 'unix'}://localhost:{client_port}"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    argv = ["etcd", "--name", "calico-py", "--data-dir", str(data_dir),
            "--listen-client-urls", listen, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"calico-py={peer}",
            "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"]
    if tls is not None:
        argv += ["--cert-file", str(tls.cert), "--key-file", str(tls.key),
                 "--trusted-ca-file", str(tls.ca), "--client-cert-auth"]
    # etcd takes ETCD_* variables as flags: ours (client files) would clash.
    proc = spawn(argv, log, cwd=data_dir.parent, drop_env="ETCD_")
    wait_until("etcd", lambda: etcd_ready(client, admin or tls), proc, log)
    if admin is not None:
        from calicopy.datastore import etcd_auth
        store = EtcdStore([config.parse_endpoint(client)], tls=admin)
        try:
            etcd_auth.enable(store)
        finally:
            store.close()
    return proc


def start_service(module: str, listen: str, etcd: str, log: Path, unix: str = "",
                  env: dict | None = None, security=None, netns: str = "") -> subprocess.Popen:
    """A cluster service (``services.ipam``, ``services.bgp``...) on ``listen``
    (and on ``unix``, for simulated hosts), in network namespace ``netns``
    when given; returns once it is healthy. ``env`` gives it its identity
    (CALICO_TLS_* and ETCD_*_FILE); ``security`` is how we check its health."""
    addrs = ",".join(filter(None, [listen, unix]))
    argv = [sys.executable, "-m", module, f"--listen={addrs}", f"--etcd-endpoints={etcd}"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    proc = spawn(argv, log, env=env)
    probe = unix or listen
    wait_until(module, lambda: check_health(probe, security=security), proc, log)
    return proc
