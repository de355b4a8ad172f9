"""EndpointManager over an in-memory store, the real IPAM domain and a fake kernel."""

import time

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.errors import (AlreadyExists, CalicoError, DeadlineExceeded, FailedPrecondition,
                             InvalidArgument, NotFound, Unavailable)
from services.endpoint.endpoints import AddRequest, EndpointManager
from calicopy.model.endpoint import PENDING, Endpoint, endpoint_id
from services.ipam.allocator import Ipam
from tests.fakes import FakeDataplane, MemoryStore

NS = "/var/run/netns/wl1"
HANDLE = "node-1/netns/wl1"     # the IPAM handle of workload wl1 on node-1


@pytest.fixture
def world():
    store = MemoryStore()
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/24")
    ipam.create_pool("fd00::/120")
    dataplane = FakeDataplane()
    dataplane.namespaces[NS] = {"lo"}
    manager = EndpointManager(store, ipam, dataplane, "node-1")
    return store, ipam, dataplane, manager


def add(manager, **kw):
    req = dict(orchestrator="netns", workload_id="wl1", netns_path=NS)
    req.update(kw)
    return manager.add(AddRequest(**req))


def allocated(ipam):
    return sum(p["allocated"] for p in ipam.usage().pools)


def test_add_records_claims_and_plumbs(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=2, auto_ipv6=1, profile_ids=["web"])
    assert ep.state == "active" and len(ep.ipv4_nets) == 2 and len(ep.ipv6_nets) == 1
    assert ep.host_interface == "cali" + ep.endpoint_id[:11]
    assert dataplane.interfaces[ep.host_interface]["ips"] == sorted(ep.ips)
    assert manager.list() == [ep]
    stored = store.json(keys.endpoint("node-1", "netns", "wl1", ep.endpoint_id))
    assert stored["name"] == ep.host_interface and stored["ipv4_gateway"] == "169.254.1.1"
    assert {a["ip"] for a in ipam.handle_allocations(HANDLE)} == set(ep.ips)


def test_checks_in_the_original_order(world):
    store, ipam, dataplane, manager = world
    add(manager, ips=["10.0.0.5"])
    with pytest.raises(AlreadyExists, match="wl1 has already been configured with Calico"):
        add(manager, ips=["10.0.0.6"])
    with pytest.raises(FailedPrecondition, match="wl2 is not currently running"):
        add(manager, workload_id="wl2", netns_path="/var/run/netns/nope", ips=["10.9.9.9"])
    dataplane.namespaces["/ns/wl2"] = set()
    with pytest.raises(InvalidArgument, match="10.9.9.9 is not in any configured pool"):
        add(manager, workload_id="wl2", netns_path="/ns/wl2", ips=["10.9.9.9"])
    manager.ipv6 = False
    with pytest.raises(FailedPrecondition, match="This node is not configured for IPv6"):
        add(manager, workload_id="wl2", netns_path="/ns/wl2", ips=["fd00::9"])
    manager.ipv6 = True
    with pytest.raises(AlreadyExists, match="IP address 10.0.0.5 is already assigned in pool"):
        add(manager, workload_id="wl2", netns_path="/ns/wl2", ips=["10.0.0.5"])
    assert [e.workload_id for e in manager.list()] == ["wl1"]
    assert allocated(ipam) == 1


@pytest.mark.parametrize("kw,message", [
    (dict(ips=["10.0.0.300"]), "Invalid IP address"),
    (dict(ips=[]), "No address requested"),
    (dict(auto_ipv4=-1), "between 0 and 64"),
    (dict(auto_ipv4=1, interface_name="a-very-long-interface"), "Invalid interface name"),
    (dict(auto_ipv4=1, workload_id=""), "Invalid workload id"),
    (dict(auto_ipv4=1, orchestrator="Bad Orch"), "Invalid orchestrator"),
    (dict(auto_ipv4=1, netns_path=""), "netns_path or pid"),
])
def test_bad_input_changes_nothing(world, kw, message):
    store, ipam, dataplane, manager = world
    before = dict(store.data)
    with pytest.raises(InvalidArgument, match=message):
        add(manager, **kw)
    assert store.data == before and not dataplane.interfaces


def test_interface_already_in_workload(world):
    store, ipam, dataplane, manager = world
    dataplane.namespaces[NS].add("eth0")
    with pytest.raises(AlreadyExists, match="Interface eth0 already exists in wl1"):
        add(manager, auto_ipv4=1)
    assert allocated(ipam) == 0 and not manager.list()


def test_failure_mid_add_undoes_everything(world):
    store, ipam, dataplane, manager = world
    dataplane.fail_on.add("wl1")
    with pytest.raises(CalicoError, match="Kernel refused"):
        add(manager, ips=["10.0.0.7"], auto_ipv4=1, auto_ipv6=1)
    assert manager.list() == [] and allocated(ipam) == 0 and not dataplane.interfaces
    assert ipam.check()[0] == []


def test_exhausted_pool_undoes_the_explicit_claim(world):
    store, ipam, dataplane, manager = world
    ipam.create_pool("fd01::/126")
    with pytest.raises(CalicoError, match="Not enough free IPv6"):
        add(manager, ips=["10.0.0.8"], auto_ipv6=5, ipv6_pools=["fd01::/126"])
    assert allocated(ipam) == 0 and manager.list() == []


def test_an_address_added_later_comes_after_the_first(world):
    store, ipam, dataplane, manager = world
    add(manager, ips=["10.0.0.20"])
    ep = manager.add_address("netns", "wl1", "", "10.0.0.5")
    assert ep.ipv4_nets == ["10.0.0.20/32", "10.0.0.5/32"]     # the first stays first
    assert manager.list()[0].ipv4_nets == ep.ipv4_nets


def test_addresses_added_and_removed(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, ips=["10.0.0.10"])
    ep = manager.add_address("netns", "wl1", "", "10.0.0.11")
    assert ep.ipv4_nets == ["10.0.0.10/32", "10.0.0.11/32"]
    assert dataplane.interfaces[ep.host_interface]["ips"] == ["10.0.0.10", "10.0.0.11"]
    with pytest.raises(AlreadyExists):
        manager.add_address("netns", "wl1", "", "10.0.0.11")
    ep = manager.remove_address("netns", "wl1", "eth0", "10.0.0.10")
    assert ep.ipv4_nets == ["10.0.0.11/32"]
    assert ipam.get_allocation("10.0.0.10")["allocated"] is False
    with pytest.raises(NotFound, match="IP address is not assigned to container. Aborting."):
        manager.remove_address("netns", "wl1", "eth0", "10.0.0.10")
    with pytest.raises(NotFound, match="Container wl9 doesn't contain any endpoints"):
        manager.add_address("netns", "wl9", "", "10.0.0.12")


def test_remove_releases_and_deletes(world):
    store, ipam, dataplane, manager = world
    add(manager, auto_ipv4=1, auto_ipv6=1)
    removed = manager.remove("netns", "wl1")
    assert len(removed) == 1
    assert manager.list() == [] and not dataplane.interfaces and allocated(ipam) == 0
    with pytest.raises(NotFound, match="Container wl1 doesn't contain any endpoints"):
        manager.remove("netns", "wl1")


def test_set_profiles(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1)
    assert manager.set_profiles(ep.endpoint_id, ["a", "b"]).profile_ids == ["a", "b"]
    assert manager.get(ep.endpoint_id).profile_ids == ["a", "b"]
    with pytest.raises(NotFound):
        manager.set_profiles("0" * 32, [])


def test_startup_reconcile_tears_down_an_add_that_crashed(world):
    store, ipam, dataplane, manager = world
    # What a crash after claiming and plumbing, before activating, leaves.
    ep_id = endpoint_id("node-1", "netns", "wl1", "eth0")
    ep = Endpoint(ep_id, "node-1", "netns", "wl1", "eth0", NS, PENDING)
    store.commit(Txn().create(keys.endpoint("node-1", "netns", "wl1", ep_id), ep.to_json()))
    ipam.auto_assign(1, 0, HANDLE, "node-1", {"endpoint": ep_id})
    ep.set_ips([a["ip"] for a in ipam.handle_allocations(HANDLE)])
    from services.endpoint.kernel import InterfaceSpec
    dataplane.ensure(InterfaceSpec(ep.host_interface, NS, "eth0", ep.ips, workload="wl1"))
    dataplane.interfaces["caliorphan00"] = {"netns": "/x", "name": "eth0", "ips": []}

    counts = manager.reconcile(startup=True)
    assert counts["removed"] == 1 and counts["orphans"] == 1
    assert manager.list() == [] and not dataplane.interfaces and allocated(ipam) == 0


def test_reconcile_restores_and_releases_unrecorded_addresses(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1)
    ipam.auto_assign(1, 0, HANDLE, "node-1", {"endpoint": ep.endpoint_id})  # claimed, unrecorded
    dataplane.interfaces.clear()                                          # interface lost
    dataplane.namespaces[NS].discard("eth0")
    counts = manager.reconcile()
    assert counts["released"] == 1
    assert dataplane.interfaces[ep.host_interface]["ips"] == ep.ips
    assert allocated(ipam) == 1


def test_reconcile_removes_endpoints_of_dead_workloads(world):
    store, ipam, dataplane, manager = world
    add(manager, auto_ipv4=1)
    del dataplane.namespaces[NS]
    assert manager.reconcile()["removed"] == 1
    assert manager.list() == [] and allocated(ipam) == 0


def test_same_workload_name_on_two_nodes_stays_apart(world):
    store, ipam, dataplane, manager = world
    other = EndpointManager(store, ipam, dataplane, "node-2")
    dataplane.namespaces["/var/run/netns/wl1-on-2"] = set()
    mine = add(manager, auto_ipv4=1)
    theirs = other.add(AddRequest(orchestrator="netns", workload_id="wl1",
                                  netns_path="/var/run/netns/wl1-on-2", auto_ipv4=1))
    assert mine.endpoint_id != theirs.endpoint_id
    manager.reconcile()
    other.remove("netns", "wl1")
    assert ipam.get_allocation(mine.ips[0])["allocated"] is True
    assert ipam.get_allocation(theirs.ips[0])["allocated"] is False


def test_periodic_reconcile_clears_a_pending_record_no_add_owns(world):
    store, ipam, dataplane, manager = world
    ep_id = endpoint_id("node-1", "netns", "wl1", "eth0")
    ep = Endpoint(ep_id, "node-1", "netns", "wl1", "eth0", NS, PENDING)
    store.commit(Txn().create(keys.endpoint("node-1", "netns", "wl1", ep_id), ep.to_json()))
    assert manager.reconcile()["removed"] == 1
    assert manager.list() == []


# Detached endpoints (Docker's network driver) and persistent ones (the proxy).

def test_detached_endpoint_uses_preassigned_addresses_and_keeps_them(world):
    store, ipam, dataplane, manager = world
    ipam.assign_ip("10.0.0.7", "node-1/docker-ipam/10.0.0.7", "node-1", {})
    ep = add(manager, orchestrator="docker", workload_id="e1", netns_path="",
             peer_name="tmpe1", ips=["10.0.0.7"], ips_preassigned=True,
             mac="02:11:22:33:44:55")
    assert ep.detached and ep.mac == "02:11:22:33:44:55" and ep.ips == ["10.0.0.7"]
    assert dataplane.interfaces[ep.host_interface]["name"] == "tmpe1"
    # Reconcile neither tears it down (Docker does) nor re-creates a gone pair.
    manager.reconcile()
    assert manager.list() == [ep]
    dataplane.remove(ep.host_interface)
    manager.reconcile()
    assert ep.host_interface not in dataplane.interfaces and manager.list() == [ep]
    with pytest.raises(FailedPrecondition, match="configured by docker"):
        manager.add_address("docker", "e1", "eth0", "10.0.0.8")
    manager.remove("docker", "e1")
    assert manager.list() == []
    # The caller claimed the address, so the caller releases it.
    assert ipam.get_allocation("10.0.0.7")["allocated"]


@pytest.mark.parametrize("kw,error,message", [
    (dict(ips=["10.0.0.9"]), FailedPrecondition, "10.0.0.9 is not assigned in IPAM"),
    (dict(ips=["10.0.0.7"], auto_ipv4=1), InvalidArgument, "do not ask for auto"),
    (dict(ips=["10.0.0.7"], netns_path=NS), InvalidArgument, "not both"),
    (dict(ips=["10.0.0.7"], mac="01:00:00:00:00:01"), InvalidArgument, "unicast MAC"),
])
def test_detached_bad_input_changes_nothing(world, kw, error, message):
    store, ipam, dataplane, manager = world
    ipam.assign_ip("10.0.0.7", "node-1/docker-ipam/10.0.0.7", "node-1", {})
    req = dict(orchestrator="docker", workload_id="e1", netns_path="", peer_name="tmpe1",
               ips_preassigned=True)
    req.update(kw)
    with pytest.raises(error, match=message):
        manager.add(AddRequest(**req))
    assert manager.list() == [] and dataplane.interfaces == {}
    assert allocated(ipam) == 1


def test_persistent_endpoint_sleeps_while_stopped_and_comes_back(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1, persistent=True)
    dataplane.stop_workload(NS)
    manager.reconcile()
    assert manager.list() == [ep] and ipam.get_allocation(ep.ips[0])["allocated"]
    # Started again, in a new namespace: same id, addresses and MAC.
    dataplane.namespaces["/proc/99/ns/net"] = {"lo"}
    again = add(manager, netns_path="/proc/99/ns/net", auto_ipv4=1, persistent=True)
    assert (again.endpoint_id, again.ips, again.mac) == (ep.endpoint_id, ep.ips, ep.mac)
    assert again.netns == "/proc/99/ns/net"
    assert dataplane.interfaces[ep.host_interface]["netns"] == "/proc/99/ns/net"
    # While it runs, the same add again is a retry; a different one a duplicate.
    assert add(manager, netns_path="/proc/99/ns/net", auto_ipv4=1, persistent=True) == again
    with pytest.raises(AlreadyExists, match="already been configured"):
        add(manager, netns_path="/proc/99/ns/net", auto_ipv4=2, persistent=True)
    manager.remove("netns", "wl1")
    assert allocated(ipam) == 0


def test_non_persistent_endpoint_goes_with_its_workload(world):
    store, ipam, dataplane, manager = world
    add(manager, auto_ipv4=1)
    dataplane.stop_workload(NS)
    manager.reconcile()
    assert manager.list() == [] and allocated(ipam) == 0


def test_a_retried_add_gets_the_same_endpoint(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1, auto_ipv6=1, profile_ids=["web"])
    assert add(manager, auto_ipv4=1, auto_ipv6=1, profile_ids=["web"]) == ep
    assert allocated(ipam) == 2
    with pytest.raises(AlreadyExists, match="already been configured"):
        add(manager, auto_ipv4=1, profile_ids=["web"])


# MTU.

def test_mtu_is_recorded_applied_and_kept_by_reconcile(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1, auto_ipv6=1, mtu=1400)
    assert ep.mtu == 1400 and manager.get(ep.endpoint_id).mtu == 1400
    assert store.json(keys.endpoint("node-1", "netns", "wl1", ep.endpoint_id))["mtu"] == 1400
    assert dataplane.interfaces[ep.host_interface]["mtu"] == 1400
    dataplane.interfaces[ep.host_interface]["mtu"] = 9000      # changed behind our back
    manager.reconcile()
    assert dataplane.interfaces[ep.host_interface]["mtu"] == 1400
    # A retry must ask for the same MTU; another MTU is another request.
    assert add(manager, auto_ipv4=1, auto_ipv6=1, mtu=1400) == ep
    with pytest.raises(AlreadyExists, match="already been configured"):
        add(manager, auto_ipv4=1, auto_ipv6=1, mtu=1500)


def test_mtu_zero_is_the_kernel_default_and_not_enforced(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1)
    assert ep.mtu == 0 and dataplane.interfaces[ep.host_interface]["mtu"] == 1500
    dataplane.interfaces[ep.host_interface]["mtu"] = 9000
    manager.reconcile()
    assert dataplane.interfaces[ep.host_interface]["mtu"] == 9000


def test_a_record_from_before_mtu_existed_still_matches_its_retry(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1)
    key = keys.endpoint("node-1", "netns", "wl1", ep.endpoint_id)
    old = {k: v for k, v in store.json(key).items() if k != "mtu"}
    store.commit(Txn().update(store.get(key), old))
    assert add(manager, auto_ipv4=1) == ep


@pytest.mark.parametrize("kw,message", [
    (dict(auto_ipv4=1, mtu=67), "Invalid mtu 67: give 68 to 65535, or 0 for the kernel's "
                                "default"),
    (dict(auto_ipv4=1, mtu=65536), "Invalid mtu 65536"),
    (dict(auto_ipv4=1, mtu=-1), "Invalid mtu -1"),
    (dict(auto_ipv6=1, mtu=1279), "mtu 1279 is too small for IPv6 addresses"),
    (dict(ips=["fd00::5"], mtu=576), "mtu 576 is too small for IPv6"),
])
def test_bad_mtu_changes_nothing(world, kw, message):
    store, ipam, dataplane, manager = world
    before = dict(store.data)
    with pytest.raises(InvalidArgument, match=message):
        add(manager, **kw)
    assert store.data == before and not dataplane.interfaces and allocated(ipam) == 0


def test_small_mtu_refuses_a_later_ipv6_address(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1, mtu=576)
    assert dataplane.interfaces[ep.host_interface]["mtu"] == 576
    with pytest.raises(InvalidArgument, match="too small for IPv6"):
        manager.add_address("netns", "wl1", "eth0", auto_ipv6=1)
    assert manager.get(ep.endpoint_id).ips == ep.ips and allocated(ipam) == 1


def test_detached_endpoint_gets_the_mtu(world):
    store, ipam, dataplane, manager = world
    ipam.assign_ip("10.0.0.7", "node-1/docker-ipam/10.0.0.7", "node-1", {})
    ep = add(manager, orchestrator="docker", workload_id="e1", netns_path="",
             peer_name="tmpe1", ips=["10.0.0.7"], ips_preassigned=True, mtu=1450)
    assert ep.mtu == 1450 and dataplane.interfaces[ep.host_interface]["mtu"] == 1450


def test_a_reused_pid_path_is_not_the_stopped_workload(world):
    store, ipam, dataplane, manager = world
    dataplane.namespaces["/proc/7/ns/net"] = {"lo"}
    ep = add(manager, netns_path="/proc/7/ns/net", auto_ipv4=1, persistent=True)
    # The workload stops; pid 7 is reused by a process in another namespace.
    dataplane.stop_workload("/proc/7/ns/net")
    dataplane.namespaces["/proc/7/ns/net"] = {"lo", "eth0"}
    dataplane.ids["/proc/7/ns/net"] = "the host"
    manager.reconcile()
    assert ep.host_interface not in dataplane.interfaces      # nothing put in there
    dataplane.namespaces["/proc/8/ns/net"] = {"lo"}
    again = add(manager, netns_path="/proc/8/ns/net", auto_ipv4=1, persistent=True)
    assert again.ips == ep.ips and again.netns == "/proc/8/ns/net"


def test_preassigned_address_of_another_endpoint_is_refused(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, ips=["10.0.0.5"])
    with pytest.raises(AlreadyExists, match=f"belongs to endpoint {ep.endpoint_id}"):
        add(manager, orchestrator="docker", workload_id="e9", netns_path="",
            peer_name="tmpe9", ips=["10.0.0.5"], ips_preassigned=True)
    assert len(manager.list()) == 1


# Requests and deadlines towards IPAM.

def test_claims_carry_a_request_id_so_an_ipam_retry_repeats_them(world):
    store, ipam, dataplane, manager = world
    ep = add(manager, auto_ipv4=1)
    [(request_id, record)] = store.json(keys.handle(HANDLE))["requests"].items()
    assert record["ips"] == ep.ips
    # What an IPAM client retrying the call (on another replica) gets: the same.
    assert ipam.auto_assign(1, 0, HANDLE, "node-1", {}, request_id=request_id) == (ep.ips, [])
    assert allocated(ipam) == 1
    manager.add_address("netns", "wl1", "eth0", auto_ipv4=1)
    assert len(store.json(keys.handle(HANDLE))["requests"]) == 2 and allocated(ipam) == 2


def test_an_add_near_its_callers_deadline_gives_up_before_claiming(world):
    store, ipam, dataplane, manager = world
    request = AddRequest(orchestrator="netns", workload_id="wl1", netns_path=NS, auto_ipv4=1)
    # IPAM gets the caller's time less what the add needs afterwards.
    with pytest.raises(DeadlineExceeded):
        manager.add(request, deadline=time.monotonic() + 0.5)
    assert manager.list() == [] and allocated(ipam) == 0 and not dataplane.interfaces
    assert manager.add(request, deadline=time.monotonic() + 30).ips


def test_periodic_reconciles_ask_ipam_about_leaks_only_every_so_often(world, monkeypatch):
    """The leak check is one IPAM call per endpoint: at every start and every
    LEAK_CHECK_EVERY seconds, not at every periodic pass (a thousand
    endpoints on fifty hosts made it a steady load on the cluster's IPAM)."""
    store, ipam, dataplane, manager = world
    add(manager, auto_ipv4=1)
    asked = []
    real = ipam.handle_allocations
    monkeypatch.setattr(ipam, "handle_allocations", lambda h: asked.append(h) or real(h))
    manager.reconcile()
    assert len(asked) == 1
    manager.reconcile()
    assert len(asked) == 1              # not due yet
    manager.reconcile(startup=True)
    assert len(asked) == 2              # a start always looks
    monkeypatch.setattr(manager, "_next_leak_check", 0.0)
    manager.reconcile()
    assert len(asked) == 3


def test_a_leak_check_that_failed_is_tried_again_at_the_next_pass(world, monkeypatch):
    store, ipam, dataplane, manager = world
    add(manager, auto_ipv4=1)
    asked = []
    real = ipam.handle_allocations

    def down_once(handle):
        asked.append(handle)
        if len(asked) == 1:
            raise Unavailable("IPAM is down")
        return real(handle)
    monkeypatch.setattr(ipam, "handle_allocations", down_once)
    manager.reconcile()
    manager.reconcile()
    assert len(asked) == 2              # not ten minutes later
