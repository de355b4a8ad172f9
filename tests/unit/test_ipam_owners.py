"""Allocations against endpoints: the consistency check both ways, the release
guard, a forced pool removal naming its users, and retiring a host."""

import ipaddress

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.errors import FailedPrecondition
from calicopy.model.bgp import Node
from calicopy.model.ipam import PENDING, Block
from services.endpoint.endpoints import AddRequest, EndpointManager
from services.ipam.allocator import Ipam
from tests.fakes import FakeDataplane, MemoryStore

NS1, NS2 = "/var/run/netns/wl1", "/var/run/netns/wl2"


@pytest.fixture
def world():
    store = MemoryStore()
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/24", block_size=28)
    dataplane = FakeDataplane()
    dataplane.namespaces.update({NS1: set(), NS2: set()})
    return store, ipam, EndpointManager(store, ipam, dataplane, "node-1")


def add(manager, workload, path, **kw):
    return manager.add(AddRequest(orchestrator="netns", workload_id=workload, netns_path=path,
                                  **kw))


def who(ep):
    return f"endpoint {ep.endpoint_id} (netns workload {ep.workload_id} on node node-1)"


def problems(ipam):
    return [(p.kind, p.subject, p.detail) for p in ipam.check()[0]]


def test_releasing_a_live_endpoints_address_needs_force(world):
    store, ipam, manager = world
    ep = add(manager, "wl1", NS1, auto_ipv4=1)
    ip = ep.ips[0]
    with pytest.raises(FailedPrecondition) as refused:
        ipam.release_ips([ip])
    assert str(refused.value) == (
        f"{ip} is in use by {who(ep)}; remove the workload first, or run "
        f"'calicoctl ipam release --ip={ip} --force' to free it anyway.")
    assert ipam.get_allocation(ip)["allocated"]
    # Its owner releases it as ever (the endpoint service passes its handle).
    assert ipam.release_ips([ip], ep.handle) == ([ip], [])
    ipam.assign_ip(ip, ep.handle, "node-1", {"endpoint": ep.endpoint_id})
    assert ipam.release_ips([ip], force=True) == ([ip], [])


def test_check_finds_an_endpoint_address_that_is_not_allocated(world):
    store, ipam, manager = world
    ep = add(manager, "wl1", NS1, auto_ipv4=1)
    ip = ep.ips[0]
    ipam.release_ips([ip], force=True)
    assert problems(ipam) == [(
        "endpoint-address-not-allocated", ip,
        f"Endpoint {ep.endpoint_id} (netns workload wl1 on node node-1) uses {ip}, which is "
        "not allocated; remove the workload and add it again ('calicoctl container remove "
        "wl1' on node node-1).")]
    # A second workload is then given the same address: both are in trouble.
    other = add(manager, "wl2", NS2, ips=[ip])
    assert problems(ipam) == [(
        "endpoint-address-not-allocated", ip,
        f"Endpoint {ep.endpoint_id} (netns workload wl1 on node node-1) uses {ip}, which is "
        f"allocated to handle node-1/netns/wl2 (endpoint {other.endpoint_id}): two workloads "
        "hold it; remove the workload and add it again ('calicoctl container remove wl1' on "
        "node node-1).")]


def test_check_finds_an_allocation_whose_owner_is_gone(world):
    store, ipam, manager = world
    ep = add(manager, "wl1", NS1, auto_ipv4=1)
    # The record goes, the address stays (a late commit after a teardown).
    store.delete_prefix(keys.node_endpoints_prefix("node-1"))
    ip = ep.ips[0]
    assert problems(ipam) == [(
        "allocation-without-owner", ip,
        f"{ip} is allocated to handle node-1/netns/wl1, whose owner (endpoint "
        f"{ep.endpoint_id} of node node-1) no longer exists; the garbage collector releases "
        f"it after its grace period, or run 'calicoctl ipam release --ip={ip}'.")]
    ipam.release_ips([ip])          # nobody uses it: no force needed
    assert problems(ipam) == []


def test_forced_pool_removal_names_the_endpoints_that_use_it(world):
    store, ipam, manager = world
    ep = add(manager, "wl1", NS1, auto_ipv4=1)
    with pytest.raises(FailedPrecondition) as refused:
        ipam.delete_pool("10.0.0.0/24")
    assert str(refused.value) == (
        f"Pool 10.0.0.0/24 still has 1 allocated address(es), in use by {who(ep)}; release "
        "them first, or force the removal to drop them.")
    assert [u.describe() for u in ipam.endpoints_using("10.0.0.0/24")] == [who(ep)]
    assert ipam.delete_pool("10.0.0.0/24", force=True) == 1


def test_retiring_a_host_frees_its_addresses_and_blocks(world):
    store, ipam, manager = world
    a1 = ipam.auto_assign(1, 0, "node-1/netns/w1", "node-1", {"node": "node-1"})[0][0]
    block_a = ipaddress.ip_network(f"{a1}/28", strict=False)
    borrowed = str(block_a.network_address + 9)
    ipam.assign_ip(borrowed, "node-2/netns/x", "node-2")      # node-2's, in node-1's block
    d1 = ipam.auto_assign(1, 0, "node-1/docker-ipam/d1", "node-1", {"node": "node-1"},
                          ipv4_pools=["10.0.0.0/24"])[0][0]
    other_block = next(b for b in ipam.pools.list()[0][0].blocks_from("x")
                       if b != block_a and ipaddress.ip_address(d1) not in b)
    store.commit(Txn().create(keys.affinity("node-1", other_block), {"state": PENDING}))
    node2 = ipam.auto_assign(1, 0, "node-2/netns/y", "node-2")[0][0]

    result = ipam.release_host("node-1")
    assert sorted(result.released) == sorted([a1, d1])
    assert result.blocks_unaffined == [str(block_a)] and result.blocks_freed == []
    assert store.list(keys.AFFINITIES[:-1] + "/node-1") == []
    assert Block.from_json(store.json(keys.block(block_a))).host is None
    assert ipam.get_allocation(borrowed)["allocated"] and ipam.get_allocation(node2)["allocated"]
    assert problems(ipam) == []
    again = ipam.release_host("node-1")
    assert (again.released, again.blocks_freed, again.blocks_unaffined) == ([], [], [])
    # The kept block goes once its last address does.
    ipam.release_ips([borrowed], "node-2/netns/x")
    assert store.get(keys.block(block_a)) is None
    assert problems(ipam) == []


def test_retiring_a_host_frees_its_empty_blocks(world):
    store, ipam, manager = world
    ip = ipam.auto_assign(1, 0, "node-1/netns/w1", "node-1")[0][0]
    block = ipaddress.ip_network(f"{ip}/28", strict=False)
    result = ipam.release_host("node-1")
    assert (result.released, result.blocks_freed, result.blocks_unaffined) == \
        ([ip], [str(block)], [])
    assert store.list(keys.IPAM + "block/") == [] and store.list(keys.AFFINITIES) == []


def test_check_finds_an_address_two_endpoints_list(world):
    store, ipam, manager = world
    store.commit(Txn().create(keys.node("node-1"), Node("node-1", "172.30.0.1").to_json()))
    ipam.assign_ip("10.0.0.7", "node-1/docker-ipam/d1", "node-1", {"node": "node-1"})
    eps = [manager.add(AddRequest(orchestrator="docker", workload_id=f"dep{n}",
                                  peer_name=f"tmp{n}", ips=["10.0.0.7"], ips_preassigned=True))
           for n in (1, 2)]
    found = problems(ipam)
    assert [(kind, subject) for kind, subject, _ in found] == \
        [("endpoint-address-not-allocated", "10.0.0.7")] * 2
    assert found[0][2] == (
        f"Endpoint {eps[0].endpoint_id} (docker workload dep1 on node node-1) uses 10.0.0.7, "
        f"which endpoint {eps[1].endpoint_id} (docker workload dep2 on node node-1) lists "
        "too: two workloads hold it; remove the workload and add it again ('docker rm -f' of "
        "its container, on node node-1).")


def test_a_malformed_endpoint_record_neither_breaks_nor_frees_anything(world):
    store, ipam, manager = world
    ep = add(manager, "wl1", NS1, auto_ipv4=1)
    bad = keys.endpoint("node-1", "netns", "bad", "b" * 32)
    store.commit(Txn().create(bad, {"state": "active"}))
    store.commit(Txn().create(keys.endpoint("node-1", "netns", "bogus", "c" * 32), dict(
        store.json(keys.endpoint("node-1", "netns", "wl1", ep.endpoint_id)),
        endpoint_id="c" * 32, workload_id="bogus", ipv4_nets=["bogus/32"])))
    assert [u.workload_id for u in ipam.endpoints_using("10.0.0.0/24")] == ["wl1"]
    with pytest.raises(FailedPrecondition):
        ipam.release_ips(ep.ips)
    # Malformed records are skipped as absent (calicoctl check lists them): the
    # check neither fails nor reports the good endpoint's address.
    assert [(kind, subject) for kind, subject, _ in problems(ipam)] == []
