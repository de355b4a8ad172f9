"""Fixtures shared by every test: a PKI, a real etcd, the services, calicoctl.

The test session acts as the operator: its environment carries the admin
certificate (CALICO_TLS_*, ETCD_*_FILE), so calicoctl and every client the
tests make present it. etcd is started once per session on free loopback
ports in a temporary folder, with TLS, client-certificate authentication and
etcd's own users and roles on (calicopy.datastore.etcd_auth); it is stopped
by PID at the end, and every test that uses it leaves it empty. Services
serve mutual TLS on loopback, with the services' own certificates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from calicopy import pki, rpc
from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from calicopy.tls import Security, TlsFiles
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from tests import cli
from tests.cli import ROOT  # noqa: F401 (tests import it from here)
from tools import launch
from tools.lab import CONTROL_HOSTS

SERVICE_HOSTS = CONTROL_HOSTS                  # tools.lab's control plane


def identity_files(folder: Path, identity: str) -> TlsFiles:
    pki.ensure(folder, {identity: list(SERVICE_HOSTS)})
    return TlsFiles(pki.paths(folder, pki.CA_NAME)[0], *pki.paths(folder, identity))


@pytest.fixture(scope="session")
def pki_dir():
    """A CA, and certificates issued from it on demand (identity_files)."""
    folder = Path(tempfile.mkdtemp(prefix="calico-test-pki-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def operator_env(pki_dir):
    """Everything this session runs acts as admin, unless told otherwise."""
    admin = identity_files(pki_dir, "admin")
    env = {"CALICO_PKI_DIR": str(pki_dir),
           "CALICO_TLS_CA_FILE": str(admin.ca), "CALICO_TLS_CERT_FILE": str(admin.cert),
           "CALICO_TLS_KEY_FILE": str(admin.key), "ETCD_CA_CERT_FILE": str(admin.ca),
           "ETCD_CERT_FILE": str(admin.cert), "ETCD_KEY_FILE": str(admin.key)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def etcd_server(pki_dir):
    """A real etcd for this test session (TLS, authentication on):
    (https://127.0.0.1:<port>, the unixs: socket namespaces reach it on)."""
    tmp = Path(tempfile.mkdtemp(prefix="calico-test-etcd-"))
    port = launch.free_port()
    proc = launch.start_etcd(tmp / "data", port, launch.free_port(), tmp / "etcd.log",
                             tls=identity_files(pki_dir, "service:etcd"),
                             admin=identity_files(pki_dir, "admin"))
    try:
        yield (f"https://127.0.0.1:{port}",
               launch.etcd_unix_endpoint(tmp / "data", port, tls=True))
    finally:
        launch.stop_pid(proc.pid)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd(etcd_server):
    """The session's etcd, as an ETCD_ENDPOINTS entry."""
    return etcd_server[0]


@pytest.fixture
def store(etcd, pki_dir):
    """etcd as the operator (admin), emptied before and after the test."""
    s = EtcdStore.from_env(etcd)
    s.delete_prefix(keys.ROOT)
    try:
        yield s
    finally:
        s.delete_prefix(keys.ROOT)
        s.close()


@pytest.fixture(scope="session")
def service_security(pki_dir):
    """What an in-process service serves with: mutual TLS, as service:<name>."""
    return lambda name: Security(identity_files(pki_dir, f"service:{name}"))


@contextlib.contextmanager
def serving(create_server, domain, socket_path, security=None):
    """An in-process service on a free loopback port (mutual TLS with
    ``security``, else plaintext) and a unix socket, stopped afterwards;
    yields (host:port, unix:<path>)."""
    unix = f"unix:{socket_path}"
    server, port = create_server(["127.0.0.1:0", unix], domain,
                                 security=security or Security(insecure=True))
    server.start()
    try:
        yield f"127.0.0.1:{port}", unix
    finally:
        server.stop(grace=None).wait()


@pytest.fixture
def ipam_server(store, tmp_path, service_security):
    """The IPAM service over the test etcd."""
    with serving(create_server, Ipam(store), tmp_path / "ipam.sock",
                 service_security("ipam")) as addrs:
        yield addrs


@pytest.fixture
def ipam_addr(ipam_server):
    return ipam_server[0]


@pytest.fixture
def bgp_server(store, tmp_path, service_security):
    """The BGP service over the test etcd."""
    from services.bgp import server
    from services.bgp.registry import BgpRegistry
    with serving(server.create_server, BgpRegistry(store), tmp_path / "bgp.sock",
                 service_security("bgp")) as addrs:
        yield addrs


@pytest.fixture
def policy_server(store, tmp_path, service_security):
    """The policy service over the test etcd."""
    from services.policy import server
    from services.policy.registry import PolicyRegistry
    with serving(server.create_server, PolicyRegistry(store), tmp_path / "policy.sock",
                 service_security("policy")) as addrs:
        yield addrs


@pytest.fixture
def lab(etcd_server, store, pki_dir, tmp_path):
    """Simulated hosts and workloads in namespaces, with their own control
    plane (tools.lab) over the test etcd; all removed afterwards."""
    from tools.lab import Lab
    the_lab = Lab(tmp_path, etcd_server[1], pki_dir)
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def calicoctl(ipam_addr, etcd):
    """Run calicoctl as a user would; returns the CompletedProcess."""
    def run(*args, input=None, env=None):
        return cli.calicoctl(*args, input=input, env={"CALICO_IPAM_ADDR": ipam_addr,
                                                      "ETCD_ENDPOINTS": etcd, **(env or {})})
    return run


class IpamClient:
    """A thin test client: keyword arguments in, response message out."""

    def __init__(self, addr):
        from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
        self.pb = ipam_pb2
        self.channel = rpc.channel(addr)
        self.stub = ipam_pb2_grpc.IpamServiceStub(self.channel)

    _ACRONYMS = {"assign_ip": "AssignIP", "release_ips": "ReleaseIPs"}

    def __getattr__(self, snake):
        method = self._ACRONYMS.get(snake) or "".join(p.capitalize() for p in snake.split("_"))
        request_class = getattr(self.pb, f"{method}Request")
        return lambda **kw: getattr(self.stub, method)(request_class(**kw), timeout=30)


@pytest.fixture
def ipam_client(ipam_addr):
    client = IpamClient(ipam_addr)
    try:
        yield client
    finally:
        client.channel.close()
