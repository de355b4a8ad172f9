"""The IP-in-IP agent's reads and wake-ups (node.ipip.agent): without an
IP-in-IP pool its cost does not grow with the cluster."""

import ipaddress

from pyetcd.etcdrpc import kv_pb2

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.bgp import Node
from calicopy.model.ipam import Block, Pool
from node.ipip.agent import IpipAgent
from tests.fakes import MemoryStore, _event, _Response


class CountingStore(MemoryStore):
    """Remembers the prefixes it was asked to list."""

    def __init__(self):
        super().__init__()
        self.listed: list[str] = []

    def list(self, prefix):
        self.listed.append(prefix)
        return super().list(prefix)


class Kernel:
    """The dataplane's side: what the agent asked for."""

    def __init__(self):
        self.applied, self.teardowns = [], 0

    def teardown(self, local=""):
        self.teardowns += 1
        return False

    def apply(self, wanted, local, address, mtu):
        self.applied.append((wanted, local, address))
        return {}


class Ipam:
    def handle_allocations(self, handle):
        return [{"ip": "10.20.0.1"}]

    def release_by_handle(self, handle):
        pass


def world(mode: str) -> CountingStore:
    store = CountingStore()
    txn = Txn().create(keys.pool(ipaddress.ip_network("10.20.0.0/16")),
                       Pool.new(ipaddress.ip_network("10.20.0.0/16"), ipip_mode=mode).to_json())
    for name, ip in (("h1", "172.30.0.2"), ("h2", "172.30.0.3")):
        txn.create(keys.node(name), Node(name=name, ipv4=ip).to_json())
    block = Block.empty(ipaddress.ip_network("10.20.0.64/26"), "h2")
    block.allocate(1, "h2/w", "h2", {})
    txn.create(keys.block(ipaddress.ip_network("10.20.0.64/26")), block.to_json())
    txn.create(keys.endpoint("h2", "netns", "w", "0" * 32), {"state": "active"})
    store.commit(txn)
    return store


def agent(store) -> IpipAgent:
    return IpipAgent(store, "h1", Ipam(), dataplane=Kernel(), on_link=lambda ip: True,
                     mtu_of=lambda ip: 1500)


def event(key: str) -> _Response:
    return _Response([_event(kv_pb2.Event.PUT, key, "{}", 1)])


def test_without_an_ip_in_ip_pool_it_reads_and_wakes_for_pools_only():
    store = world("never")
    a = agent(store)
    a.sync(full=True)
    assert a.dataplane.teardowns == 1 and a.dataplane.applied == []
    # Neither the hosts' records (all their endpoints) nor the blocks were read.
    assert store.listed == [keys.pools_prefix()]
    assert not a.relevant(event(keys.endpoint("h2", "netns", "x", "1" * 32)))
    assert not a.relevant(event(keys.block(ipaddress.ip_network("10.20.1.0/26"))))
    assert not a.relevant(event(keys.node("h3")))
    assert a.relevant(event(keys.pool(ipaddress.ip_network("10.30.0.0/16"))))
    assert a.relevant(_Response(None))          # an ended watch: look again


def test_with_an_ip_in_ip_pool_it_routes_other_hosts_blocks_and_wakes_for_them():
    store = world("always")
    a = agent(store)
    a.sync(full=True)
    (wanted, local, address), = a.dataplane.applied
    assert (wanted.routes, local, address) == ({"10.20.0.64/26": "172.30.0.3"}, "172.30.0.2",
                                               "10.20.0.1")
    assert a.relevant(event(keys.block(ipaddress.ip_network("10.20.1.0/26"))))
    assert a.relevant(event(keys.node("h3")))


def test_it_watches_only_the_pools_while_no_pool_uses_ip_in_ip():
    """Inactive, the agent's watch is the pools' prefix: the events of every
    add in the cluster (records, blocks, handles) never reach it. A pool
    turning IP-in-IP widens it again (and the rebuilt watch's first pass is
    a full one)."""
    import logging

    from calicopy.datastore.watchloop import WatchLoop

    store = world("never")
    a = agent(store)
    a._loop = WatchLoop(store, keys.PREFIX, a.sync, log=logging.getLogger("test"))
    a.sync(full=True)
    assert a._loop.prefix == keys.pools_prefix()
    key = keys.pool(ipaddress.ip_network("10.20.0.0/16"))
    pool = Pool.new(ipaddress.ip_network("10.20.0.0/16"), ipip_mode="always").to_json()
    store.commit(Txn().put(key, store.get(key), pool))
    a.sync(full=True)
    assert a._loop.prefix == keys.PREFIX
