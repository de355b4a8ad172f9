"""Shared by the benchmarks: percentiles, and a private control plane."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calicopy import pki  # noqa: E402
from calicopy.tls import Security, TlsFiles  # noqa: E402
from tools import launch  # noqa: E402
from tools.lab import CONTROL_HOSTS  # noqa: E402


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# A benchmark stopped with SIGTERM (or SIGINT, which a shell leaves ignored in
# a background job) still removes what it made: its finally blocks run.
signal.signal(signal.SIGTERM, _interrupt)
signal.signal(signal.SIGINT, _interrupt)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Plane:
    """A private control plane: where its parts listen and as whom we call them."""
    tmp: Path
    etcd_tcp: str          # an ETCD_ENDPOINTS entry on loopback
    etcd_unix: str         # the same etcd for other network namespaces (simulated hosts)
    ipam_tcp: str
    ipam_unix: str
    pki: Path | None       # None: a plaintext plane (CALICO_INSECURE)
    env: dict              # what makes a process the operator (admin)
    pids: dict = dataclasses.field(default_factory=dict)   # "etcd", "ipam": their processes

    @property
    def security(self) -> Security:
        return Security(TlsFiles.of(self.env["CALICO_TLS_CA_FILE"],
                                    self.env["CALICO_TLS_CERT_FILE"],
                                    self.env["CALICO_TLS_KEY_FILE"]) if self.pki else None,
                        insecure=self.pki is None)


def identity_files(folder: Path, identity: str) -> TlsFiles:
    """The certificate of ``identity`` in ``folder`` (made, with the CA, if missing)."""
    pki.ensure(folder, {identity: list(CONTROL_HOSTS)})
    return TlsFiles(pki.paths(folder, pki.CA_NAME)[0], *pki.paths(folder, identity))


def identity_env(folder: Path, identity: str) -> dict:
    """What makes a process present ``identity`` (to the services and to etcd)."""
    files = identity_files(folder, identity)
    return {"CALICO_TLS_CA_FILE": str(files.ca), "CALICO_TLS_CERT_FILE": str(files.cert),
            "CALICO_TLS_KEY_FILE": str(files.key), "ETCD_CA_CERT_FILE": str(files.ca),
            "ETCD_CERT_FILE": str(files.cert), "ETCD_KEY_FILE": str(files.key)}


_identity_env = identity_env


@contextlib.contextmanager
def private_pki(name: str):
    """A temporary folder with a CA in ``<folder>/pki``; while it lasts this
    process acts as admin (its environment says so). Yields (folder, pki
    folder); both removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=f"calico-bench-{name}-"))
    folder = tmp / "pki"
    env = {**identity_env(folder, "admin"), "CALICO_PKI_DIR": str(folder)}
    saved = {k: os.environ.get(k) for k in list(env) + list(TLS_VARS)}
    for k in TLS_VARS:
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield tmp, folder
    finally:
        _restore(saved)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def control_plane(name: str, tls: bool = True):
    """etcd and the IPAM service on free loopback ports and unix sockets, in a
    temporary folder; with ``tls`` (the default) as in production: mutual TLS,
    etcd with client certificates and its authentication on; without, in
    plaintext. While it runs, this process acts as admin (its environment
    says so). Everything is stopped and removed afterwards; yields a Plane."""
    tmp = Path(tempfile.mkdtemp(prefix=f"calico-bench-{name}-"))
    folder = tmp / "pki" if tls else None
    env = (_identity_env(folder, "admin") if tls else
           {"CALICO_INSECURE": "1", "CALICO_PKI_DIR": str(tmp / "no-pki")})
    if tls:
        env["CALICO_PKI_DIR"] = str(folder)
    saved = {k: os.environ.get(k) for k in list(env) + list(TLS_VARS)}
    for k in TLS_VARS:
        os.environ.pop(k, None)
    os.environ.update(env)
    etcd = ipam = None
    try:
        port = launch.free_port()
        etcd = launch.start_etcd(
            tmp / "etcd", port, launch.free_port(), tmp / "etcd.log",
            tls=TlsFiles.of(*_files(folder, "service:etcd")) if tls else None,
            admin=TlsFiles.of(*_files(folder, "admin")) if tls else None)
        etcd_tcp = f"https://127.0.0.1:{port}" if tls else f"127.0.0.1:{port}"
        ipam_tcp, ipam_unix = f"127.0.0.1:{launch.free_port()}", f"unix:{tmp}/ipam.sock"
        ipam = launch.start_service(
            "services.ipam", ipam_tcp, etcd_tcp, tmp / "ipam.log", unix=ipam_unix,
            env=_identity_env(folder, "service:ipam") if tls else {"CALICO_INSECURE": "1"})
        yield Plane(tmp, etcd_tcp, launch.etcd_unix_endpoint(tmp / "etcd", port, tls=tls),
                    ipam_tcp, ipam_unix, folder, env, {"etcd": etcd.pid, "ipam": ipam.pid})
    finally:
        for proc in (ipam, etcd):
            if proc is not None:
                launch.stop_pid(proc.pid)
        _restore(saved)
        shutil.rmtree(tmp, ignore_errors=True)



def _restore(saved: dict[str, str | None]) -> None:
    """Put the environment variables back as ``saved`` had them."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


TLS_VARS = ("CALICO_TLS_CA_FILE", "CALICO_TLS_CERT_FILE", "CALICO_TLS_KEY_FILE",
            "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "CALICO_INSECURE")


def _files(folder: Path, identity: str) -> tuple:
    pki.ensure(folder, {identity: []})
    return (pki.paths(folder, pki.CA_NAME)[0], *pki.paths(folder, identity))
