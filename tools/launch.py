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

from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import DatastoreUnavailable
from calicopy.rpc import check_health
from tools import processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], log: Path, env: dict | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})}, cwd=cwd)


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


def etcd_ready(client_port: int) -> bool:
    store = EtcdStore([("127.0.0.1", client_port)], timeout=1.0)
    try:
        store.check()
        return True
    except DatastoreUnavailable:
        return False
    finally:
        store.close()


def etcd_unix_endpoint(data_dir: Path, client_port: int) -> str:
    """The unix socket ``start_etcd`` also listens on, as an ETCD_ENDPOINTS entry.

    Processes in other network namespaces (simulated hosts) reach etcd
    through it without any IP route to this namespace. etcd names the socket
    file after the URL's host:port, in its working directory.
    """
    return f"unix:{data_dir.parent}/localhost:{client_port}"


def start_etcd(data_dir: Path, client_port: int, peer_port: int, log: Path
               ) -> subprocess.Popen:
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    listen = f"{client},unix://localhost:{client_port}"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = spawn(["etcd", "--name", "calico-py", "--data-dir", str(data_dir),
                  "--listen-client-urls", listen, "--advertise-client-urls", client,
                  "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                  "--initial-cluster", f"calico-py={peer}"], log, cwd=data_dir.parent)
    wait_until("etcd", lambda: etcd_ready(client_port), proc, log)
    return proc


def start_service(module: str, listen: str, etcd: str, log: Path, unix: str = ""
                  ) -> subprocess.Popen:
    """A cluster service (``services.ipam``, ``services.bgp``...) on ``listen``
    (and on ``unix``, for simulated hosts); returns once it is healthy."""
    addrs = ",".join(filter(None, [listen, unix]))
    proc = spawn([sys.executable, "-m", module, f"--listen={addrs}",
                  f"--etcd-endpoints={etcd}"], log)
    wait_until(module, lambda: check_health(listen), proc, log)
    return proc
