"""An add waits for the node's policy agent on one shared watch of its
progress, not by polling etcd every few milliseconds while it holds a worker
and the workload's lock; and it still sees the progress if the watch ends."""

import json
import threading

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.errors import Unavailable
from calicopy.model.endpoint import ACTIVE
from services.endpoint.endpoints import AddRequest, EndpointManager
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
