"""An add waits for the node's policy agent on one shared watch of its
progress, not by polling etcd every few milliseconds while it holds a worker
and the workload's lock; and it still sees the progress if the watch ends."""

import json
import threading
import time

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.errors import DeadlineExceeded, Unavailable
from calicopy.model.endpoint import ACTIVE
from services.endpoint.endpoints import IPAM_RESERVE, AddRequest, EndpointManager
from services.ipam.allocator import Ipam
from tests.fakes import FakeDataplane, MemoryStore

NODE = "node-1"
PROGRESS = keys.policy_applied(NODE)


@pytest.fixture
def world():
    store = MemoryStore()
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/24")
    dataplane = FakeDataplane()
    for name in ("wl1", "wl2"):
        dataplane.namespaces[f"/ns/{name}"] = set()
    return store, EndpointManager(store, ipam, dataplane, NODE, policy_wait=30)


def slow_agent(store, before_reporting=lambda: None):
    """The node's agent: once an endpoint is active, it takes its time (half a
    second of work), then records the revision it has programmed."""
    def run():
        while not any(kv.json().get("state") == ACTIVE for k, kv in list(store.data.items())
                      if keys.is_endpoint(k)):
            threading.Event().wait(0.01)
        threading.Event().wait(0.5)
        before_reporting()
        old = store.data.get(PROGRESS)
        assert store.commit(Txn().put(PROGRESS, old, {"revision": store.revision}))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def add(manager, name):
    return manager.add(AddRequest("netns", name, netns_path=f"/ns/{name}", auto_ipv4=1))


def test_an_add_waits_on_a_watch_not_by_polling(world):
    store, manager = world
    agent = slow_agent(store)
    add(manager, "wl1")
    agent.join()
    # Polling every 5 ms read the key about a hundred times in that half second.
    assert store.reads.get(PROGRESS, 0) <= 3
    assert len(store.watches) == 1          # one watch, kept for the next adds
    store.reads.clear()
    slow_agent(store).join(0)
    add(manager, "wl2")
    assert store.reads.get(PROGRESS, 0) <= 3 and len(store.watches) == 1


def test_a_wait_whose_watch_ends_still_sees_the_progress(world):
    store, manager = world
    agent = slow_agent(store, before_reporting=store.end_watches)
    ep = add(manager, "wl1")
    agent.join()
    assert ep.state == ACTIVE


def test_an_add_fails_when_the_agent_never_reports(world):
    store, manager = world
    manager.policy_wait = 0.3
    with pytest.raises(Unavailable, match="policy agent of node node-1 did not program"):
        add(manager, "wl1")
    assert store.list(keys.node_endpoints_prefix(NODE)) == []     # torn down


def test_an_add_whose_caller_gave_up_is_undone_not_finished(world):
    """The policy wait ends with the caller's deadline (less what undoing
    takes), not the node's longer limit: an agent that reports only after the
    caller gave up must not turn an add the caller saw fail into a workload
    (found by the chaos test: the node waits up to 10 s, as long as calicoctl's
    and the CNI plugin's own deadline)."""
    store, manager = world
    deadline = time.monotonic() + IPAM_RESERVE + 1.0    # IPAM's share ends before it
    late = threading.Event()

    def after_the_deadline():
        while time.monotonic() < deadline:
            threading.Event().wait(0.05)
        late.set()
    agent = slow_agent(store, before_reporting=after_the_deadline)
    with pytest.raises(DeadlineExceeded, match="caller's deadline"):
        manager.add(AddRequest("netns", "wl1", netns_path="/ns/wl1", auto_ipv4=1), deadline)
    agent.join(30)
    assert late.is_set()
    assert store.list(keys.node_endpoints_prefix(NODE)) == []     # torn down
    assert not [k for k in store.data if k.startswith(keys.blocks_prefix())
                and store.json(k)["allocations"]]


def test_an_add_that_died_waiting_for_its_policy_is_torn_down_at_the_next_start(world):
    """A node whose endpoint service dies while an add waits for its policy
    (the record already active, so that the agent programs it) must not keep
    the workload its caller saw fail: the next start tears it down, as it does
    a pending one (found by the chaos test: a CNI ADD that failed with "cannot
    be reached" left a live endpoint, its address and its interface)."""
    store, dying = world
    dying.policy_wait = 2.0         # the agent never reports
    outcome = []

    def add_in_flight():
        try:
            add(dying, "wl1")
        except Unavailable as exc:
            outcome.append(exc)
    thread = threading.Thread(target=add_in_flight, daemon=True)
    thread.start()
    waiting = (lambda: [kv for kv in store.list(keys.node_endpoints_prefix(NODE))
                        if kv.json().get("state") == ACTIVE])
    deadline = time.monotonic() + 10
    while not waiting():
        assert time.monotonic() < deadline, "the add never activated its endpoint"
        threading.Event().wait(0.01)
    # The service restarts (the old one is as good as dead: it only waits).
    restarted = EndpointManager(store, dying.ipam, dying.dataplane, NODE, policy_wait=30)
    assert restarted.reconcile(startup=True)["removed"] == 1
    assert store.list(keys.node_endpoints_prefix(NODE)) == []
    assert not [k for k in store.data if k.startswith(keys.blocks_prefix())
                and store.json(k)["allocations"]]
    assert not dying.dataplane.host_interfaces()
    thread.join(30)
    assert outcome


def test_a_finished_add_no_longer_awaits_its_policy(world):
    store, manager = world
    agent = slow_agent(store)
    add(manager, "wl1")
    agent.join(30)
    [kv] = [kv for kv in store.list(keys.node_endpoints_prefix(NODE))
            if keys.is_endpoint(kv.key)]
    assert kv.json()["state"] == ACTIVE and "awaiting_policy" not in kv.json()
    # ...so that a restart keeps it.
    restarted = EndpointManager(store, manager.ipam, manager.dataplane, NODE, policy_wait=30)
    assert restarted.reconcile(startup=True)["removed"] == 0
    assert len(store.list(keys.node_endpoints_prefix(NODE))) == 1


def test_an_add_on_a_watch_older_than_its_commit_reads_nothing(world):
    """The watch existed before the add committed its record: the agent's
    answer arrives on it, so the add costs etcd no read of the progress key."""
    store, manager = world
    slow_agent(store).join(0)
    add(manager, "wl1")                     # makes the watch, reads the key once
    store.reads.clear()

    def answer(events):             # the agent, at once: wl2's record is active
        if any(b"wl2" in e.key and e.value and json.loads(e.value)["state"] == ACTIVE
               for e in events):
            old = store.data.get(PROGRESS)
            threading.Thread(target=store.commit, args=(
                Txn().put(PROGRESS, old, {"revision": store.revision}),)).start()
    store.watch(keys.node_endpoints_prefix(NODE), lambda resp: answer(resp.events))
    ep = add(manager, "wl2")
    assert ep.state == ACTIVE
    assert store.reads.get(PROGRESS, 0) == 0
