"""The IPAM service as its own process (``python -m services.ipam``), for the
tests that pass it flags or kill it: started on a free loopback port with
the service's certificate, stopped by its PID."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from calicopy.rpc import check_health
from calicopy.tls import Security
from tools import launch, processes
from tools.lab import Identities


@contextlib.contextmanager
def ipam_process(etcd: str, pki_dir: Path, log: Path, *flags: str, env: dict | None = None):
    """Yields (the process, its host:port) once it answers its health check."""
    identities = Identities(pki_dir)
    addr = f"127.0.0.1:{launch.free_port()}"
    argv = [sys.executable, "-m", "services.ipam", f"--listen={addr}",
            f"--etcd-endpoints={etcd}", *flags]
    proc = launch.spawn(argv, log, env={**identities.env("service:ipam"), **(env or {})},
                        cwd=Path(__file__).resolve().parents[2])
    try:
        launch.wait_until("the IPAM service", lambda: check_health(
            addr, security=Security(identities.files("admin"))), proc, log)
        yield proc, addr
    finally:
        launch.stop_pid(proc.pid)


def wait_for_log(log: Path, text: str, count: int = 1, timeout: float = 30.0) -> None:
    """Until ``text`` appears ``count`` times in ``log``."""
    deadline = time.monotonic() + timeout
    while log.read_text().count(text) < count:
        assert time.monotonic() < deadline, \
            f"{text!r} not {count} time(s) in {log}:\n{processes.tail(log)}"
        time.sleep(0.05)


def wait_for(what: str, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
