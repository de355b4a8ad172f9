"""A malformed record is treated as absent and reported, never fatal: every
reader (endpoint service, policy agent, BIRD renderer, policy and BGP
registries, explain, IPAM readers) skips it, logs it once with its key, and
the node's processes list it for `calicoctl status`."""

import ipaddress
import logging

import pytest

from calicopy import quarantine
from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model import families
from calicopy.model.endpoint import ACTIVE, Endpoint, endpoint_id
from calicopy.model.policy import Snapshot
from calicopy.node_paths import NodePaths
from node.bird.renderer import current_model
from node.policy.agent import Agent
from services.bgp.registry import BgpRegistry
from services.endpoint.endpoints import AddRequest, EndpointManager
from services.ipam.allocator import Ipam
from services.policy.explain import Packet, explain
from services.policy.registry import PolicyRegistry
from tests.fakes import FakeDataplane, MemoryStore
from tests.kernel_stub import KernelStub

ONLY_STATE = {"state": "active"}


def put(store, key, value):
    assert store.commit(Txn().put(key, store.get(key), value))


def endpoint(store, node, workload, ips, profiles=("NET",), raw=None):
    ep_id = endpoint_id(node, "netns", workload, "eth0")
    ep = Endpoint(ep_id, node, "netns", workload, "eth0", f"/var/run/netns/{workload}", ACTIVE,
                  "02:00:00:00:00:01", profile_ids=list(profiles))
    ep.set_ips(ips)
    data = {**ep.to_json(), **(raw or {})}
    key = keys.endpoint(node, "netns", workload, ep_id)
    put(store, key, data)
    return key


def bad_endpoint_key(node):
    return keys.endpoint(node, "netns", "broken", "f" * 32)


@pytest.fixture
def world():
    store = MemoryStore()
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/24")
    put(store, keys.node("h1"), {"name": "h1", "ipv4": "172.30.0.1"})
    put(store, keys.node("h2"), {"name": "h2", "ipv4": "172.30.0.2"})
    put(store, keys.profile_tags("NET"), ["NET"])
    put(store, keys.profile_rules("NET"), {"inbound_rules": [{"action": "allow", "src_tag": "NET"}],
                                           "outbound_rules": [{"action": "allow"}]})
    return store, ipam


def test_endpoint_service_skips_a_record_with_only_a_state(world, tmp_path, caplog):
    store, ipam = world
    put(store, bad_endpoint_key("h1"), ONLY_STATE)
    dataplane = FakeDataplane()
    dataplane.namespaces["/ns/wl1"] = set()
    paths = NodePaths(tmp_path, "h1")
    paths.dir.mkdir()
    manager = EndpointManager(store, ipam, dataplane, "h1",
                              quarantine=quarantine.for_node(logging.getLogger("t"), paths,
                                                             "endpoint"))
    with caplog.at_level(logging.ERROR):
        manager.reconcile(startup=True)          # crash-looped with KeyError before
        ep = manager.add(AddRequest("netns", "wl1", netns_path="/ns/wl1", auto_ipv4=1))
        assert [e.endpoint_id for e in manager.list()] == [ep.endpoint_id]
        manager.reconcile()
    assert store.get(bad_endpoint_key("h1")) is not None       # skipped, not destroyed
    logged = [r for r in caplog.records if bad_endpoint_key("h1") in r.getMessage()]
    assert len(logged) == 1 and "field 'endpoint_id' is missing" in logged[0].getMessage()
    assert quarantine.reports(paths) == {
        "endpoint": {bad_endpoint_key("h1"): "field 'endpoint_id' is missing"}}

    # Fixed (here: deleted), it leaves the report.
    assert store.commit(Txn().delete(store.get(bad_endpoint_key("h1"))))
    manager.list()
    assert quarantine.reports(paths) == {"endpoint": {}}


def test_policy_agent_skips_a_bogus_address_of_another_host(world, tmp_path, caplog):
    store, _ = world
    endpoint(store, "h1", "mine", ["10.0.0.1"])
    bogus = endpoint(store, "h2", "theirs", ["10.0.0.2"], raw={"ipv4_nets": ["bogus/32"]})
    kernel = KernelStub()
    paths = NodePaths(tmp_path, "h1")
    paths.dir.mkdir()
    agent = Agent(store, "h1", "nft", run=kernel.run,
                  quarantine=quarantine.for_node(logging.getLogger("t"), paths, "policy"))
    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            assert agent.step(True) == store.revision          # raised ValueError before
    assert "10.0.0.1" in repr(kernel.sets())             # the good workload is there
    assert "10.0.0.2" not in repr(kernel.sets())         # the bad one is absent
    assert len([r for r in caplog.records if bogus in r.getMessage()]) == 1
    assert quarantine.reports(paths)["policy"] == {
        bogus: "field 'ipv4_nets' holds 'bogus/32', not an IPv4 network"}


def test_renderer_skips_bad_node_and_peer_records(world):
    store, _ = world
    put(store, keys.node("h3"), {"name": "h3", "ipv4": "not-an-ip"})
    put(store, keys.CONFIG + "bgp_peer_v4/172.30.0.9", {"ip": "172.30.0.9", "as_num": "x"})
    put(store, keys.CONFIG + "bgp_peer_v4/172.30.0.8", {"ip": "172.30.0.8", "as_num": 65000})
    put(store, keys.BGP_AS, "sixty")
    bad = {}
    model = current_model(store, "h1", bad)                    # raised before
    assert [p.ip for p in model.peers if p.ip.startswith("172.30.0.")] == \
        ["172.30.0.2", "172.30.0.8"]
    assert set(bad) == {keys.node("h3"), keys.CONFIG + "bgp_peer_v4/172.30.0.9", keys.BGP_AS}


def test_renderer_treats_its_own_malformed_node_record_as_unregistered(world):
    store, _ = world
    put(store, keys.node("h1"), {"name": "h1"})
    bad = {}
    assert current_model(store, "h1", bad) is None
    assert bad == {keys.node("h1"): "field 'ipv4' is missing"}


def test_services_skip_malformed_records(world):
    store, ipam = world
    put(store, bad_endpoint_key("h1"), ONLY_STATE)
    good = endpoint(store, "h2", "ok", ["10.0.0.3"])
    put(store, keys.node("h3"), ["not", "a", "node"])
    put(store, keys.pool(ipaddress.ip_network("10.9.0.0/16")), {"cidr": "x"})
    bgp = BgpRegistry(store)
    assert [n.name for n in bgp.list_nodes()] == ["h1", "h2"]   # ListNodes failed before
    assert bgp.endpoints("h1") == []
    bgp.delete_node("h1")          # no endpoint of its own: the bad record goes with it
    assert store.get(bad_endpoint_key("h1")) is None
    put(store, bad_endpoint_key("h2"), ONLY_STATE)
    policy = PolicyRegistry(store)
    assert [ep.endpoint_id for ep, _ in policy.endpoints()] == [store.json(good)["endpoint_id"]]
    assert [str(p.cidr) for p in ipam.list_pools()] == ["10.0.0.0/24"]
    endpoint(store, "h2", "bogus", ["10.0.0.4"], raw={"ipv4_nets": ["bogus/32"]})
    revision, kvs = store.snapshot(keys.PREFIX)
    allowed, _, _ = explain(Snapshot.from_kvs(revision, kvs), Packet("10.0.0.3", "10.0.0.3"))
    assert allowed                                 # raised ValueError before


def test_check_lists_every_malformed_record_with_what_is_wrong(world):
    store, _ = world
    put(store, bad_endpoint_key("h1"), ONLY_STATE)
    endpoint(store, "h2", "theirs", ["10.0.0.2"], raw={"ipv4_nets": ["bogus/32"]})
    put(store, keys.profile_rules("NET"), {"inbound_rules": [{"action": "maybe"}]})
    put(store, keys.node("h3"), {"name": "h3", "ipv4": "1.2.3"})
    put(store, keys.IPAM + "block/v4/10.0.0.0-26", "{not json")
    _, kvs = store.snapshot(keys.ROOT)
    found = dict(families.check(kvs))
    assert found == {
        bad_endpoint_key("h1"): "field 'endpoint_id' is missing",
        keys.endpoint("h2", "netns", "theirs", endpoint_id("h2", "netns", "theirs", "eth0")):
            "field 'ipv4_nets' holds 'bogus/32', not an IPv4 network",
        keys.profile_rules("NET"):
            "Invalid inbound rule 1: field 'action' must be allow or deny, not 'maybe'",
        keys.node("h3"): "field 'ipv4' holds '1.2.3', not an IPv4 address",
        keys.IPAM + "block/v4/10.0.0.0-26": "not JSON: '{not json'",
    }
