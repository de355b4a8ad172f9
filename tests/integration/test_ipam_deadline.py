"""The caller's deadline bounds IPAM's work: once the caller has given up (and,
like the endpoint service, released the handle), no late commit lands behind
it and leaves an address nobody owns.

Real etcd and a real IPAM server; the server's etcd reads of blocks are held
up until the test lets them go, as a slow etcd (or one failing over) would.
"""

import threading

import grpc
import pytest

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import rpc
from calicopy.datastore import keys
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from tests.conftest import serving

HANDLE = "node-1/netns/w1"


class HeldStore:
    """The real store, except that reads of IPAM blocks wait while ``held``."""

    def __init__(self, inner):
        self.inner = inner
        self.released = threading.Event()
        self.holding = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _hold(self, key):
        if key.startswith(keys.blocks_prefix()) and not self.released.is_set():
            self.holding.set()
            self.released.wait(60)

    def get(self, key):
        self._hold(key)
        return self.inner.get(key)

    def list(self, prefix):
        self._hold(prefix)
        return self.inner.list(prefix)


class Watched(Ipam):
    """Says when an AutoAssign has finished, whatever its outcome."""

    def __init__(self, store):
        super().__init__(store)
        self.finished = threading.Event()

    def auto_assign(self, *args, **kwargs):
        try:
            return super().auto_assign(*args, **kwargs)
        finally:
            self.finished.set()


def test_no_allocation_lands_after_the_caller_gave_up(store, tmp_path, service_security):
    Ipam(store).create_pool("10.80.0.0/24")
    held = HeldStore(store)
    ipam = Watched(held)
    with serving(create_server, ipam, tmp_path / "ipam.sock",
                 service_security("ipam")) as (addr, _):
        with rpc.channel(addr) as channel:
            stub = ipam_pb2_grpc.IpamServiceStub(channel)
            with pytest.raises(grpc.RpcError) as gave_up:
                stub.AutoAssign(ipam_pb2.AutoAssignRequest(num_ipv4=1, handle_id=HANDLE,
                                                           hostname="node-1"), timeout=1.0)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert held.holding.is_set()         # IPAM was in the middle of its work
            # The caller tears down: its handle holds nothing (yet).
            assert list(stub.ReleaseByHandle(ipam_pb2.ReleaseByHandleRequest(
                handle_id=HANDLE), timeout=10).released) == []
            held.released.set()
            assert ipam.finished.wait(30)
            usage = stub.GetUsage(ipam_pb2.GetUsageRequest(), timeout=10)
    assert usage.pools[0].allocated == 0
    assert store.get(keys.handle(HANDLE)) is None
