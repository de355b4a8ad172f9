"""The shared watch -> sync loop (calicopy.datastore.watchloop) over the
in-memory store."""

import logging
import threading

from calicopy.datastore.store import Txn
from calicopy.datastore.watchloop import WatchLoop
from tests.fakes import MemoryStore


def test_a_stop_ends_a_quiet_loop_without_waiting_for_its_poll():
    """A node stops its children with SIGTERM and kills what is still there
    after its grace time: a loop that slept out a long poll first (the IP-in-IP
    agent's is 10 s) made every node stop take that long."""
    store = MemoryStore()
    passes = []
    loop = WatchLoop(store, "/calico/", lambda full, events: passes.append(full),
                     log=logging.getLogger("test"), resync=600, poll=600)
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    while not passes:           # the first (full) pass is done: the loop now waits
        threading.Event().wait(0.01)
    stop.set()
    runner.join(30)             # far less than the poll: the stop woke it
    assert not runner.is_alive()
    assert passes == [True]


def test_changes_wake_the_loop_for_an_incremental_pass():
    store = MemoryStore()
    seen = []
    woke = threading.Event()

    def sync(full, events):
        seen.append((full, [e.key.decode() for e in events]))
        if not full:
            woke.set()
    loop = WatchLoop(store, "/calico/", sync, log=logging.getLogger("test"), resync=600,
                     poll=600, relevant=lambda response: True)
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    while not seen:
        threading.Event().wait(0.01)
    store.commit(Txn().put("/calico/v1/config/x", None, {"a": 1}))
    assert woke.wait(30)
    stop.set()
    runner.join(30)
    assert seen[0] == (True, []) and seen[-1] == (False, ["/calico/v1/config/x"])


def test_poll_may_follow_the_owner_state():
    """``poll`` as a function: asked after every pass, so an owner polls often
    only while it has something to do (the drop answerer while a question is
    open) and sleeps until an event otherwise."""
    store = MemoryStore()
    busy = threading.Event()
    passes = []
    loop = WatchLoop(store, "/calico/", lambda full, events: passes.append(full),
                     log=logging.getLogger("test"), resync=600,
                     poll=lambda: 0.01 if busy.is_set() else 600)
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    try:
        threading.Event().wait(0.5)
        assert passes == [True]             # idle: no pass but the first
        busy.set()
        loop.changed.set()                  # one event, then the short poll takes over
        threading.Event().wait(0.5)
        assert len(passes) > 5
    finally:
        stop.set()
        runner.join(30)


def test_watch_readers_wake_at_most_once_a_second():
    """gRPC's blocking waits wake every MAXIMUM_WAIT_TIMEOUT (0.1 s in grpcio)
    for signal handlers; every watch reader is such a wait for its process's
    whole life, so importing the watch module lengthens it (a grpcio that
    drops the knob fails here, not silently in an idle node's CPU)."""
    import grpc._common

    import calicopy.datastore.etcd_watch as etcd_watch
    assert grpc._common.MAXIMUM_WAIT_TIMEOUT >= etcd_watch.GRPC_WAIT >= 1.0


def test_owners_wake_only_for_records_they_read():
    """keys.touches: what the agent and the renderer filter their watches
    with. An add elsewhere writes a workload record, a block, a handle and a
    report: the renderer wakes for the block only, the agent for the
    workload only; a failed watch always wakes both."""
    from types import SimpleNamespace

    from calicopy.datastore import keys
    from node.bird.view import BirdView
    from node.policy.view import relevant as agent_reads

    def response(*names):
        return SimpleNamespace(events=[SimpleNamespace(key=k.encode()) for k in names])
    workload = keys.endpoint("h2", "k8s", "ns/pod", "0123456789abcdef0123456789abcdef")
    block = "/calico/v1/ipam/block/v4/10.0.0.0-26"
    handle = keys.handle("h2/k8s/ns/pod")
    report = keys.policy_applied("h2")
    renderer_reads = BirdView("h1").relevant
    for reads, wakes in ((renderer_reads, block), (agent_reads, workload)):
        for name in (workload, block, handle, report):
            assert keys.touches(response(name), reads) == (name == wakes), name
        assert keys.touches(SimpleNamespace(), reads)
