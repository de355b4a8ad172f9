"""AutoAssign's request ids (a retry gets what the request got, on any replica)
and deadlines (no commit once the caller's deadline is near), over an
in-memory store."""

import ipaddress

import pytest

from calicopy.datastore import keys
from calicopy.errors import AlreadyExists, DeadlineExceeded
from services.ipam.allocator import Ipam
from tests.fakes import MemoryStore
from tests.unit.hooks import HookedStore, creates

HANDLE = "host-a/netns/w1"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def store():
    s = MemoryStore()
    ipam = Ipam(s)
    ipam.create_pool("10.0.0.0/24")
    ipam.create_pool("fd00::/120")
    return s


def allocated(ipam):
    return sum(p["allocated"] for p in ipam.usage().pools)


def test_the_same_request_gets_the_same_addresses_on_any_replica(store):
    first, second = Ipam(store), Ipam(store)
    got = first.auto_assign(1, 1, HANDLE, "host-a", request_id="r1")
    assert second.auto_assign(1, 1, HANDLE, "host-a", request_id="r1") == got
    assert first.auto_assign(1, 1, HANDLE, "host-a", request_id="r1") == got
    assert allocated(first) == 2
    other = second.auto_assign(1, 0, HANDLE, "host-a", request_id="r2")
    assert other[0] != got[0] and allocated(first) == 3
    assert sorted(a["ip"] for a in first.handle_allocations(HANDLE)) == \
        sorted(got[0] + got[1] + other[0])
    # Without a request id, every call allocates anew (as before).
    first.auto_assign(1, 0, HANDLE, "host-a")
    assert allocated(first) == 4
    assert first.check()[0] == []


def test_a_request_id_reused_for_another_request_is_refused(store):
    ipam = Ipam(store)
    ipam.auto_assign(1, 0, HANDLE, "host-a", request_id="r1")
    with pytest.raises(AlreadyExists, match="Request r1 of handle host-a/netns/w1 asked for "
                                            "1 IPv4 and 0 IPv6 address"):
        ipam.auto_assign(2, 0, HANDLE, "host-a", request_id="r1")
    assert allocated(ipam) == 1


def test_released_addresses_leave_the_request_record(store):
    ipam = Ipam(store)
    v4, _ = ipam.auto_assign(1, 0, HANDLE, "host-a", request_id="r1")
    ipam.release_by_handle(HANDLE)
    assert store.get(keys.handle(HANDLE)) is None
    again, _ = ipam.auto_assign(1, 0, HANDLE, "host-a", request_id="r1")
    assert allocated(ipam) == 1 and ipam.check()[0] == []


def test_a_duplicate_running_at_the_same_time_allocates_nothing_more(store):
    """Replica A is about to commit when replica B, given the same request (a
    client that failed over), completes it: A's commit loses the race on the
    handle, A re-reads the request's record and answers the same."""
    hooked = HookedStore(store)
    a, b = Ipam(hooked), Ipam(store)
    theirs = {}
    hooked.before_commit(creates("/ipam/handle/"),
                         lambda: theirs.update(got=b.auto_assign(1, 0, HANDLE, "host-a",
                                                                 request_id="r1")))
    mine = a.auto_assign(1, 0, HANDLE, "host-a", request_id="r1")
    assert hooked.fired()
    assert mine == theirs["got"] and allocated(a) == 1
    assert a.check()[0] == []


def test_a_failing_duplicate_never_takes_back_what_a_completed_request_got(store):
    """A allocates the IPv4 address, then B (the same request, elsewhere)
    completes it with the IPv6 one and answers; A's deadline passes before
    it commits anything more. A fails, but must not release the IPv4
    address B's caller now holds."""
    clock = Clock()
    hooked = HookedStore(store)
    a, b = Ipam(hooked, clock=clock), Ipam(store)
    theirs = {}

    def b_completes_then_time_passes():
        theirs["got"] = b.auto_assign(1, 1, HANDLE, "host-a", request_id="r1")
        clock.now += 60
    hooked.after_commit(creates("/ipam/handle/"), b_completes_then_time_passes)
    try:
        a.auto_assign(1, 1, HANDLE, "host-a", request_id="r1", deadline=clock.now + 10)
    except DeadlineExceeded:
        pass
    assert hooked.fired()
    v4, v6 = theirs["got"]
    held = {x["ip"] for x in a.handle_allocations(HANDLE)}
    assert held == set(v4 + v6) and allocated(a) == 2
    assert a.auto_assign(1, 1, HANDLE, "host-a", request_id="r1") == (v4, v6)


def test_a_passed_deadline_commits_nothing(store):
    clock = Clock()
    ipam = Ipam(store, clock=clock)
    before = store.list(keys.IPAM)
    with pytest.raises(DeadlineExceeded, match=f"gave up on handle {HANDLE}"):
        ipam.auto_assign(1, 0, HANDLE, "host-a", deadline=clock.now - 0.1)
    with pytest.raises(DeadlineExceeded):
        ipam.assign_ip("10.0.0.9", HANDLE, "host-a", deadline=clock.now)
    assert store.list(keys.IPAM) == before


def test_a_deadline_passing_mid_allocation_leaves_nothing_allocated(store):
    """The block claim finishes, then the deadline passes: the allocation is
    not committed (it would land after the caller gave up and tore down)."""
    clock = Clock()
    hooked = HookedStore(store)
    ipam = Ipam(hooked, clock=clock)

    def slow():
        clock.now += 5
    hooked.after_commit(creates("/ipam/affinity/", "confirmed"), slow)
    with pytest.raises(DeadlineExceeded):
        ipam.auto_assign(1, 1, HANDLE, "host-a", deadline=clock.now + 2)
    assert hooked.fired()
    assert allocated(ipam) == 0 and store.get(keys.handle(HANDLE)) is None
    assert ipam.check()[0] == []
    # The claimed block is the host's: the next allocation uses it.
    v4, _ = ipam.auto_assign(1, 0, HANDLE, "host-a", deadline=clock.now + 2)
    assert ipaddress.ip_address(v4[0]) in ipaddress.ip_network("10.0.0.0/24")
    assert [h["blocks"] for h in ipam.usage().hosts] == [1]
