"""The workloads' default MTU (services.endpoint.mtu), and an add that takes it."""

import ipaddress

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.ipam import Pool
from services.endpoint.mtu import DefaultMtu
from tests.fakes import MemoryStore


def put(store, key, value):
    assert store.commit(Txn().put(key, store.get(key), value))


def test_underlay_minus_20_while_an_ipv4_pool_uses_ip_in_ip():
    store = MemoryStore()
    put(store, keys.node("h1"), {"name": "h1", "ipv4": "172.30.0.2"})
    underlay = {"172.30.0.2": 9000}
    mtu = DefaultMtu(store, "h1", mtu_of=lambda ip: underlay.get(ip, 1500))
    net = ipaddress.ip_network("10.20.0.0/16")
    put(store, keys.pool(net), Pool.new(net).to_json())
    assert mtu() == 0                                  # no encapsulation: the kernel's
    put(store, keys.pool(net), Pool.new(net, ipip_mode="cross-subnet").to_json())
    assert mtu() == 8980
    underlay["172.30.0.2"] = 1500
    assert mtu() == 1480
    assert DefaultMtu(store, "h1", configured=1400, mtu_of=lambda ip: 1500)() == 1400
