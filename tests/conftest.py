"""Fixtures shared by every test: a real etcd, the IPAM service, calicoctl.

The etcd is started once per session on free loopback ports in a temporary
folder and stopped by PID at the end; every test that uses it leaves it empty.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest

from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from calicopy import rpc
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from tests import cli
from tests.cli import ROOT  # noqa: F401 (tests import it from here)
from tools import launch


@pytest.fixture(scope="session")
def etcd_server():
    """A real etcd for this test session: (host:port, unix socket endpoint)."""
    tmp = Path(tempfile.mkdtemp(prefix="calico-test-etcd-"))
    port = launch.free_port()
    proc = launch.start_etcd(tmp / "data", port, launch.free_port(), tmp / "etcd.log")
    try:
        yield f"127.0.0.1:{port}", launch.etcd_unix_endpoint(tmp / "data", port)
    finally:
        launch.stop_pid(proc.pid)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd(etcd_server):
    """host:port of the session's etcd."""
    return etcd_server[0]


@pytest.fixture
def store(etcd):
    host, port = etcd.split(":")
    s = EtcdStore([(host, int(port))])
    s.delete_prefix(keys.ROOT)
    try:
        yield s
    finally:
        s.delete_prefix(keys.ROOT)
        s.close()


@contextlib.contextmanager
def serving(create_server, domain, socket_path):
    """An in-process service on a free loopback port and a unix socket, stopped
    afterwards; yields (host:port, unix:<path>)."""
    unix = f"unix:{socket_path}"
    server, port = create_server(["127.0.0.1:0", unix], domain)
    server.start()
    try:
        yield f"127.0.0.1:{port}", unix
    finally:
        server.stop(grace=None).wait()


@pytest.fixture
def ipam_server(store, tmp_path):
    """The IPAM service over the test etcd."""
    with serving(create_server, Ipam(store), tmp_path / "ipam.sock") as addrs:
        yield addrs


@pytest.fixture
def ipam_addr(ipam_server):
    return ipam_server[0]


@pytest.fixture
def bgp_server(store, tmp_path):
    """The BGP service over the test etcd."""
    from services.bgp import server
    from services.bgp.registry import BgpRegistry
    with serving(server.create_server, BgpRegistry(store), tmp_path / "bgp.sock") as addrs:
        yield addrs


@pytest.fixture
def policy_server(store, tmp_path):
    """The policy service over the test etcd."""
    from services.policy import server
    from services.policy.registry import PolicyRegistry
    with serving(server.create_server, PolicyRegistry(store), tmp_path / "policy.sock") as addrs:
        yield addrs


@pytest.fixture
def lab(etcd_server, ipam_server, bgp_server, policy_server, tmp_path):
    """Simulated hosts and workloads in namespaces; all removed afterwards."""
    from tools.lab import Lab
    the_lab = Lab(tmp_path, etcd_server[1], ipam_server[1], bgp=bgp_server[1],
                  policy=policy_server[1])
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
