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
