"""Nodes, settings and peers over an in-memory store."""

import pytest

from calicopy.datastore import keys
from calicopy.errors import FailedPrecondition, InvalidArgument, NotFound
from calicopy.model.bgp import Node, Peer
from services.bgp.registry import BgpRegistry
from tests.fakes import MemoryStore


@pytest.fixture
def registry():
    return BgpRegistry(MemoryStore())


def test_register_is_idempotent_and_updates(registry):
    assert registry.register(Node("h1", "172.30.0.2")) == (Node("h1", "172.30.0.2"), True)
    assert registry.register(Node("h1", "172.30.0.2"))[1] is False
    assert registry.register(Node("h1", "172.30.0.2", "fd99::2", 65001))[1] is True
    assert registry.get_node("h1").as_num == 65001
    with pytest.raises(InvalidArgument, match="already the address of node h1"):
        registry.register(Node("h2", "172.30.0.2"))


@pytest.mark.parametrize("node,message", [
    (Node("h1", "1.2.3"), "1.2.3 is not a valid IP address"),
    (Node("h1", "fd99::2"), "not a valid IPv4 address"),
    (Node("h1", "172.30.0.2", "172.30.0.9"), "not a valid IPv6 address"),
    (Node("h1", "172.30.0.2", as_num=4294967296), "Invalid AS number"),
    (Node("bad name", "172.30.0.2"), "Invalid node name"),
])
def test_register_rejects(registry, node, message):
    with pytest.raises(InvalidArgument, match=message):
        registry.register(node)
    assert registry.list_nodes() == []


def test_settings_default_and_change(registry):
    config = registry.config()
    assert (config.default_as, config.node_mesh) == (64511, True)
    config = registry.set_config(default_as=65000, node_mesh=False)
    assert (config.default_as, config.node_mesh) == (65000, False)
    with pytest.raises(InvalidArgument):
        registry.set_config(default_as=0)


def test_peers(registry):
    registry.register(Node("h1", "172.30.0.2"))
    registry.add_peer(Peer("172.30.0.250", route_reflector=True))
    registry.add_peer(Peer("172.30.0.251", 65000))
    registry.add_peer(Peer("2001:db8::1", 65000, node="h1"))
    assert [p.ip for p in registry.peers()] == ["172.30.0.250", "172.30.0.251"]
    assert [p.ip for p in registry.peers(node="h1")] == ["2001:db8::1"]
    with pytest.raises(InvalidArgument, match="172.30.0.2 is the address of node h1 itself"):
        registry.add_peer(Peer("172.30.0.2", 65000))
    with pytest.raises(NotFound, match="is not a configured BGP peer"):
        registry.remove_peer("172.30.0.250")             # it is a route reflector
    registry.remove_peer("172.30.0.250", route_reflector=True)
    with pytest.raises(NotFound):
        registry.add_peer(Peer("172.30.0.9", 65000, node="nope"))


def test_delete_node_refuses_with_endpoints_unless_forced(registry):
    registry.register(Node("h1", "172.30.0.2"))
    store = registry.store
    from calicopy.datastore.store import Txn
    from calicopy.model.endpoint import Endpoint
    ep = Endpoint("e" * 32, "h1", "netns", "w1", "eth0", "/x", "active")
    store.commit(Txn().create(keys.endpoint("h1", "netns", "w1", ep.endpoint_id), ep.to_json()))
    with pytest.raises(FailedPrecondition, match="can't be stopped. Force with --force"):
        registry.delete_node("h1")
    registry.delete_node("h1", force=True)
    assert store.list(keys.host("h1")) == [] and registry.list_nodes() == []
