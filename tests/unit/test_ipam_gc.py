"""IPAM's garbage collector over an in-memory store: an allocation whose owner
is gone on two passes at least the grace period apart is released, after a
final re-check; anything it cannot attribute is reported, never released."""

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.bgp import Node
from calicopy.model.endpoint import endpoint_id
from services.endpoint.endpoints import AddRequest, EndpointManager
from services.ipam.allocator import Ipam
from services.ipam.gc import GarbageCollector
from tests.fakes import FakeDataplane, MemoryStore
from tests.unit.hooks import HookedStore

GRACE = 300.0
NS = "/var/run/netns/live"


class Clock:
    def __init__(self):
        self.now = 5000.0

    def __call__(self):
        return self.now


class World:
    def __init__(self, store=None):
        self.raw = MemoryStore()
        self.store = store(self.raw) if store else self.raw
        self.ipam = Ipam(self.raw)
        self.ipam.create_pool("10.0.0.0/24")
        self.dataplane = FakeDataplane()
        self.dataplane.namespaces[NS] = set()
        self.clock = Clock()
        self.gc = GarbageCollector(Ipam(self.store), grace=GRACE, clock=self.clock)
        self.register("node-1")

    def register(self, name):
        self.raw.commit(Txn().create(keys.node(name), Node(name, "172.30.0.1").to_json()))

    def unregister(self, name):
        self.raw.delete_prefix(keys.host(name))

    def endpoints(self, node="node-1"):
        return EndpointManager(self.raw, self.ipam, self.dataplane, node)

    def live_endpoint(self, node="node-1"):
        return self.endpoints(node).add(AddRequest(orchestrator="netns", workload_id="live",
                                                   netns_path=NS, auto_ipv4=1))

    def orphan(self, node="node-1", workload="gone"):
        """What a late commit after a torn-down add leaves: an address under
        the endpoint's handle, tagged with an endpoint that has no record."""
        ep_id = endpoint_id(node, "netns", workload, "eth0")
        return self.ipam.auto_assign(1, 0, f"{node}/netns/{workload}", node,
                                     {"node": node, "endpoint": ep_id,
                                      "interface": "eth0"})[0][0]

    def allocated(self, ip):
        return self.ipam.get_allocation(ip)["allocated"]

    def passes(self, *offsets):
        """Passes at these offsets (seconds) from now; the last one's report."""
        start, report = self.clock.now, None
        for offset in offsets:
            self.clock.now = start + offset
            report = self.gc.run_pass()
        return report


@pytest.fixture
def world():
    return World()


def test_an_orphan_goes_after_two_passes_a_grace_period_apart(world):
    live = world.live_endpoint()
    orphan = world.orphan()
    first = world.passes(0)
    assert first.candidates == [orphan] and first.released == []
    assert world.allocated(orphan)
    assert world.passes(GRACE - 1).released == [] and world.allocated(orphan)
    assert world.passes(1).released == [orphan]
    assert not world.allocated(orphan) and world.allocated(live.ips[0])
    assert world.ipam.check()[0] == []


def test_an_owner_that_comes_back_keeps_its_address(world):
    orphan = world.orphan(workload="live")
    world.passes(0)
    # The endpoint record appears (an add's pending record was just late).
    ep = world.live_endpoint()
    assert world.passes(GRACE).released == []
    assert world.allocated(orphan) and world.allocated(ep.ips[0])


def test_a_final_recheck_keeps_an_owner_made_during_the_pass():
    world = World(store=HookedStore)
    orphan = world.orphan(workload="live")
    world.passes(0)
    # Between the pass's reading and its release, the owner's record appears.
    world.store.before_commit(lambda txn: True, world.live_endpoint)
    assert world.passes(GRACE).released == []
    assert world.store.fired() and world.allocated(orphan)


def test_a_removed_nodes_addresses_go_whoever_claimed_them(world):
    world.register("node-2")
    docker = world.ipam.auto_assign(1, 0, "node-2/docker-ipam/abc", "node-2",
                                    {"node": "node-2", "orchestrator": "docker"})[0][0]
    world.endpoints("node-2").add(AddRequest(orchestrator="docker", workload_id="dep",
                                             peer_name="tmpdep", ips=[docker],
                                             ips_preassigned=True))
    cni = world.ipam.auto_assign(1, 0, "node-2/cni-ipam/net/c1/eth0", "node-2",
                                 {"node": "node-2", "orchestrator": "cni"})[0][0]
    world.passes(0)
    assert world.passes(GRACE).released == []          # node-2 is registered and uses them
    world.unregister("node-2")                         # its records go, the addresses stay
    world.passes(GRACE)
    assert sorted(world.passes(GRACE).released) == sorted([docker, cni])


def test_docker_ipam_addresses_live_while_an_endpoint_lists_them(world):
    endpoints = world.endpoints()
    listed = "10.0.0.7"
    world.ipam.assign_ip(listed, "node-1/docker-ipam/listed", "node-1", {"node": "node-1"})
    endpoints.add(AddRequest(orchestrator="docker", workload_id="dockerep1", peer_name="tmpd1",
                             ips=[listed], ips_preassigned=True))
    labelled = world.ipam.auto_assign(1, 0, "node-1/docker-ipam/labelled", "node-1",
                                      {"node": "node-1"})[0][0]
    endpoints.add(AddRequest(orchestrator="docker", workload_id="dockerep2", peer_name="tmpd2",
                             ips=[labelled], ips_preassigned=True,
                             labels={"docker-ipam-handles": "node-1/docker-ipam/labelled"}))
    lost = world.ipam.auto_assign(1, 0, "node-1/docker-ipam/lost", "node-1",
                                  {"node": "node-1"})[0][0]
    world.passes(0)
    assert world.passes(GRACE).released == [lost]
    assert world.allocated(listed) and world.allocated(labelled)


def test_unattributable_allocations_are_reported_never_released(world):
    cni = world.ipam.auto_assign(1, 0, "node-1/cni-ipam/net/c1/eth0", "node-1",
                                 {"node": "node-1"})[0][0]
    own = world.ipam.auto_assign(1, 0, "my-scheduler-handle", "anyhost")[0][0]
    world.passes(0)
    report = world.passes(GRACE, 2 * GRACE)
    assert report.released == [] and report.candidates == []
    assert report.unattributed == ["node-1/cni-ipam/net/c1/eth0"]
    assert world.allocated(cni) and world.allocated(own)


def test_two_replicas_collecting_at_once_release_once():
    world = World(store=HookedStore)
    orphan = world.orphan()
    other = GarbageCollector(Ipam(world.raw), grace=GRACE, clock=world.clock)
    world.passes(0)
    other.run_pass()
    world.clock.now += GRACE
    # The other replica releases it just before this one commits its release.
    theirs = []
    world.store.before_commit(lambda txn: True,
                              lambda: theirs.extend(other.run_pass().released))
    assert world.gc.run_pass().released == []
    assert world.store.fired() and theirs == [orphan]
    assert not world.allocated(orphan) and world.ipam.check()[0] == []
