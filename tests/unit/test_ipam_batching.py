"""Group commit: allocations (of any host) that queue while a commit is in
flight are committed together, each keeping its own deadline, handle and
outcome."""

from __future__ import annotations

import threading
import time

import pytest

from calicopy.datastore import keys
from calicopy.errors import DeadlineExceeded
from calicopy.model.ipam import Block, Handle
from services.ipam import allocator
from services.ipam.allocator import Ipam
from tests.fakes import MemoryStore

WAIT = 10.0


class GatedStore(MemoryStore):
    """A MemoryStore whose next commit, once ``hold()`` is called, waits
    until ``release()``: what queues behind it is then seen together."""

    def __init__(self):
        super().__init__()
        self._gate = self._armed = None
        self.holding = threading.Event()

    def hold(self) -> None:
        self._gate = self._armed = threading.Event()

    def release(self) -> None:
        self._gate.set()

    def commit(self, txn):
        armed, self._armed = self._armed, None
        if armed is not None:
            self.holding.set()
            armed.wait(WAIT)
        return super().commit(txn)


@pytest.fixture
def store():
    return GatedStore()


@pytest.fixture
def ipam(store):
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/24")
    for host in ("host-a", "host-b"):
        ipam.auto_assign(1, 0, f"warm-{host}", host)      # the host's block is known now
    return ipam


def queued(ipam) -> int:
    return len(ipam._fast_lane.pending)


def wait_for(what, condition):
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def run(calls):
    """Start each call in a thread; (results, errors) by index once all end."""
    results, errors = {}, {}

    def one(i, call):
        try:
            results[i] = call()
        except Exception as exc:
            errors[i] = exc
    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, results, errors


def queue_behind_a_held_commit(ipam, store, calls):
    """The first call's commit is held; the others queue for the host; then go."""
    store.hold()
    first, results, errors = run(calls[:1])
    assert store.holding.wait(WAIT)
    rest, more_results, more_errors = run(calls[1:])
    wait_for("the calls to queue", lambda: queued(ipam) == len(calls) - 1)
    commits = store.commits
    store.release()
    for t in first + rest:
        t.join(WAIT)
    results.update({i + 1: r for i, r in more_results.items()})
    errors.update({i + 1: e for i, e in more_errors.items()})
    return results, errors, store.commits - commits


def test_a_burst_for_one_host_is_committed_in_two_transactions(ipam, store):
    calls = [lambda n=n: ipam.auto_assign(1, 0, f"w{n}", "host-a") for n in range(12)]
    results, errors, commits = queue_behind_a_held_commit(ipam, store, calls)
    assert errors == {}
    ips = [r[0][0] for r in results.values()]
    assert len(set(ips)) == 12
    assert commits == 2         # the first alone, the eleven that queued together
    for n in range(12):
        handle = Handle.from_json(f"w{n}", store.json(keys.handle(f"w{n}")))
        assert sum(handle.blocks.values()) == 1
    assert ipam.check()[0] == []


def test_a_call_whose_deadline_passed_is_left_out_of_its_batch(ipam, store):
    calls = [lambda: ipam.auto_assign(1, 0, "first", "host-a"),
             lambda: ipam.auto_assign(1, 0, "late", "host-a", deadline=time.monotonic() - 1),
             lambda: ipam.auto_assign(1, 0, "in-time", "host-a")]
    results, errors, _ = queue_behind_a_held_commit(ipam, store, calls)
    assert set(results) == {0, 2}
    assert isinstance(errors[1], DeadlineExceeded)
    assert store.json(keys.handle("late")) is None
    assert ipam.check()[0] == []


def test_two_attempts_of_one_request_in_one_burst_get_the_same_address(ipam, store):
    calls = [lambda: ipam.auto_assign(1, 0, "first", "host-a")] + \
        [lambda: ipam.auto_assign(1, 0, "w", "host-a", request_id="r1")] * 2
    results, errors, _ = queue_behind_a_held_commit(ipam, store, calls)
    assert errors == {}
    assert results[1] == results[2]
    handle = Handle.from_json("w", store.json(keys.handle("w")))
    assert sum(handle.blocks.values()) == 1 and handle.requests["r1"].ips == results[1][0]


def test_a_batch_that_loses_its_race_falls_back_and_still_allocates_once(ipam, store):
    other = Ipam(store)      # another replica, allocating in the same block meanwhile
    calls = [lambda: ipam.auto_assign(1, 0, "first", "host-a")] + \
        [lambda n=n: ipam.auto_assign(1, 0, f"w{n}", "host-a") for n in range(5)]
    store.hold()
    threads, results, errors = run(calls[:1])
    assert store.holding.wait(WAIT)
    threads2, results2, errors2 = run(calls[1:])
    wait_for("the calls to queue", lambda: queued(ipam) == 5)
    theirs = other.auto_assign(1, 0, "theirs", "host-a")    # the held commit still waits
    store.release()
    for t in threads + threads2:
        t.join(WAIT)
    assert errors == {} and errors2 == {}
    ips = [r[0][0] for r in list(results.values()) + list(results2.values())] + theirs[0]
    assert len(set(ips)) == 7
    blocks = [Block.from_json(kv.json()) for kv in store.list(keys.blocks_prefix(4))]
    assert sum(b.used for b in blocks) == 9        # with the warm-ups'
    assert ipam.check()[0] == []


def test_a_burst_over_two_hosts_is_one_transaction_each_in_its_own_block(ipam, store):
    calls = [lambda: ipam.auto_assign(1, 0, "first", "host-a")] + \
        [lambda n=n: ipam.auto_assign(1, 0, f"w{n}", f"host-{'ab'[n % 2]}") for n in range(6)]
    results, errors, commits = queue_behind_a_held_commit(ipam, store, calls)
    assert errors == {} and commits == 2
    for n in range(6):
        found = ipam.get_allocation(results[n + 1][0][0])
        assert found["block_host"] == f"host-{'ab'[n % 2]}"
    assert ipam.check()[0] == []


def test_blocks_too_big_for_one_transaction_are_committed_apart(ipam, store, monkeypatch):
    monkeypatch.setattr(allocator, "MAX_BATCH_ADDRESSES", 32)    # less than a /26 block
    calls = [lambda: ipam.auto_assign(1, 0, "first", "host-a")] + \
        [lambda n=n: ipam.auto_assign(1, 0, f"w{n}", f"host-{'ab'[n % 2]}") for n in range(4)]
    results, errors, commits = queue_behind_a_held_commit(ipam, store, calls)
    assert errors == {}
    assert commits == 4     # the first; host-a's two together; host-b's one by one
    ips = [r[0][0] for r in results.values()]
    assert len(set(ips)) == 5
    assert ipam.check()[0] == []


class CountingStore(MemoryStore):
    """Commits take a moment (as etcd's do, other threads running meanwhile);
    counts those that fail their compares."""

    def __init__(self):
        super().__init__()
        self.lost = 0

    def commit(self, txn):
        time.sleep(0.002)
        revision = super().commit(txn)
        self.lost += not revision
        return revision


def test_hosts_filling_blocks_in_a_burst_do_not_race_their_own_commits():
    store = CountingStore()
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/20", block_size=29)     # a new block every 8 addresses
    calls = [lambda c=c: [ipam.auto_assign(1, 0, f"c{c}-{n}", f"host-{c % 4}")
                          for n in range(40)] for c in range(8)]
    threads, results, errors = run(calls)
    for t in threads:
        t.join(WAIT * 6)
    assert errors == {}
    ips = [ip for r in results.values() for v4, _ in r for ip in v4]
    assert len(set(ips)) == 320
    # Group commits and a host's own claims never compete for one block (a
    # few losses may come from a claim meeting a group commit of its host).
    assert store.lost <= 10, store.lost
    assert ipam.check()[0] == []
