"""Shared by the benchmarks: percentiles, and a private control plane."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import launch  # noqa: E402


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@contextlib.contextmanager
def control_plane(name: str):
    """etcd and the IPAM service on free loopback ports and unix sockets, in a
    temporary folder; yields (tmp, etcd tcp, etcd unix, ipam tcp, ipam unix).
    Everything is stopped and removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=f"calico-bench-{name}-"))
    etcd = ipam = None
    try:
        port = launch.free_port()
        etcd = launch.start_etcd(tmp / "etcd", port, launch.free_port(), tmp / "etcd.log")
        ipam_tcp, ipam_unix = f"127.0.0.1:{launch.free_port()}", f"unix:{tmp}/ipam.sock"
        ipam = launch.start_service("services.ipam", ipam_tcp, f"127.0.0.1:{port}",
                                    tmp / "ipam.log", unix=ipam_unix)
        yield (tmp, f"127.0.0.1:{port}", launch.etcd_unix_endpoint(tmp / "etcd", port),
               ipam_tcp, ipam_unix)
    finally:
        for proc in (ipam, etcd):
            if proc is not None:
                launch.stop_pid(proc.pid)
        shutil.rmtree(tmp, ignore_errors=True)
