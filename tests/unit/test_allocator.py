"""The allocator's behaviour over an in-memory store (state, not calls, asserted)."""

import ipaddress
import threading

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound,
                             ResourceExhausted)
from services.ipam.allocator import Ipam
from calicopy.model.ipam import CONFIRMED, PENDING
from calicopy.model.ipam import Block
from tests.fakes import MemoryStore


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def ipam(store):
    return Ipam(store)


def net(text):
    return ipaddress.ip_network(text)


def in_net(ips, cidr):
    return all(ipaddress.ip_address(ip) in net(cidr) for ip in ips)


def test_host_gets_addresses_from_its_own_block(ipam, store):
    ipam.create_pool("10.0.0.0/24")
    a1, _ = ipam.auto_assign(2, 0, "w1", "host-a")
    a2, _ = ipam.auto_assign(1, 0, "w2", "host-a")
    b1, _ = ipam.auto_assign(1, 0, "w3", "host-b")
    block_a = ipam.pools.list()[0][0].block_of(ipaddress.ip_address(a1[0]))
    assert in_net(a1 + a2, str(block_a)) and not in_net(b1, str(block_a))
    assert store.json(keys.affinity("host-a", block_a)) == {"state": CONFIRMED}
    assert Block.from_json(store.json(keys.block(block_a))).host == "host-a"


def test_borrows_when_no_free_block_remains_then_exhausts(ipam):
    ipam.create_pool("10.0.0.0/25", block_size=26)  # two blocks
    ipam.auto_assign(60, 0, "a", "host-a")
    ipam.auto_assign(60, 0, "b", "host-b")
    borrowed, _ = ipam.auto_assign(8, 0, "c", "host-a")   # 4 left in a's, 4 in b's
    assert len(set(borrowed)) == 8
    usage = {h["host"]: h for h in ipam.usage().hosts}
    assert usage["host-a"]["allocated"] == 68 and usage["host-a"]["blocks"] == 1
    with pytest.raises(ResourceExhausted, match="wanted 1, found 0"):
        ipam.auto_assign(1, 0, "d", "host-c")


def test_exhaustion_is_all_or_nothing(ipam, store):
    ipam.create_pool("10.0.0.0/30")
    ipam.create_pool("fd00::/126")
    with pytest.raises(ResourceExhausted):
        ipam.auto_assign(2, 5, "w", "host-a")
    assert ipam.usage().pools[0]["allocated"] == 0
    assert ipam.release_by_handle("w") == []
    assert ipam.check()[0] == []


def test_dual_stack_and_release_by_handle(ipam, store):
    ipam.create_pool("10.0.0.0/24")
    ipam.create_pool("fd00::/120")
    v4, v6 = ipam.auto_assign(2, 1, "w", "host-a", {"ns": "x"})
    assert len(v4) == 2 and len(v6) == 1
    assert ipam.get_allocation(v6[0])["attributes"] == {"ns": "x"}
    listed = ipam.handle_allocations("w")
    assert sorted(a["ip"] for a in listed) == sorted(v4 + v6)
    assert {a["host"] for a in listed} == {"host-a"}
    assert sorted(ipam.release_by_handle("w")) == sorted(v4 + v6)
    assert ipam.release_by_handle("w") == []
    assert store.get(keys.handle("w")) is None
    assert all(p["allocated"] == 0 for p in ipam.usage().pools)


def test_assign_specific_ip(ipam):
    ipam.create_pool("10.0.0.0/24")
    assert str(ipam.assign_ip("10.0.0.77", "w", "host-a").cidr) == "10.0.0.0/24"
    with pytest.raises(AlreadyExists, match="already assigned in pool 10.0.0.0/24"):
        ipam.assign_ip("10.0.0.77", "other", "host-b")
    with pytest.raises(InvalidArgument, match="not in any configured pool"):
        ipam.assign_ip("10.9.9.9", "w", "host-a")
    # The block was claimed for host-a, so its next auto address comes from it.
    ip, _ = ipam.auto_assign(1, 0, "w2", "host-a")
    assert in_net(ip, "10.0.0.64/26")


def test_stale_release_does_not_free_a_reassigned_address(ipam):
    ipam.create_pool("10.0.0.0/24")
    ipam.assign_ip("10.0.0.5", "new-owner", "host-a")
    released, missing = ipam.release_ips(["10.0.0.5"], handle_id="old-owner")
    assert (released, missing) == ([], ["10.0.0.5"])
    assert ipam.get_allocation("10.0.0.5")["handle_id"] == "new-owner"


@pytest.mark.parametrize("call,message", [
    (lambda i: i.auto_assign(-1, 0, "w", "h"), "between 0 and 1024"),
    (lambda i: i.auto_assign(5000, 0, "w", "h"), "between 0 and 1024"),
    (lambda i: i.auto_assign(0, 0, "w", "h"), "Nothing to assign"),
    (lambda i: i.auto_assign(1, 0, "", "h"), "Invalid handle id"),
    (lambda i: i.auto_assign(1, 0, "w", "bad host"), "Invalid hostname"),
    (lambda i: i.auto_assign(1, 0, "w", "h", ipv4_pools=["fd00::/120"]), "not an IPv4 pool"),
    (lambda i: i.assign_ip("10.0.0.300", "w", "h"), "Invalid IP address"),
    (lambda i: i.create_pool("10.0.0.0/33"), "Invalid CIDR"),
])
def test_bad_input_changes_nothing(ipam, store, call, message):
    ipam.create_pool("10.0.0.0/24")
    before = dict(store.data)
    with pytest.raises(InvalidArgument, match=message):
        call(ipam)
    assert store.data == before


def test_unknown_or_missing_pools(ipam):
    with pytest.raises(FailedPrecondition, match="No enabled IPv4 pool"):
        ipam.auto_assign(1, 0, "w", "h")
    ipam.create_pool("10.0.0.0/24")
    with pytest.raises(NotFound, match="10.1.0.0/24 is not a configured pool"):
        ipam.auto_assign(1, 0, "w", "h", ipv4_pools=["10.1.0.0/24"])
    ipam.update_pool("10.0.0.0/24", disabled=True)
    with pytest.raises(FailedPrecondition, match="No enabled IPv4 pool"):
        ipam.auto_assign(1, 0, "w", "h")


def test_overlapping_pools_rejected_same_pool_exists(ipam):
    ipam.create_pool("10.0.0.0/16")
    with pytest.raises(FailedPrecondition, match="overlaps the existing pool 10.0.0.0/16"):
        ipam.create_pool("10.0.5.0/24")
    with pytest.raises(AlreadyExists):
        ipam.create_pool("10.0.0.0/16")
    ipam.create_pool("fd00::/64")   # other family never overlaps


def test_delete_pool_in_use_needs_force(ipam, store):
    ipam.create_pool("10.0.0.0/24")
    ipam.auto_assign(3, 0, "w", "host-a")
    with pytest.raises(FailedPrecondition, match="still has 3 allocated"):
        ipam.delete_pool("10.0.0.0/24")
    assert not ipam.list_pools()[0].disabled     # the refusal undid its fence
    assert ipam.delete_pool("10.0.0.0/24", force=True) == 3
    assert store.list(keys.IPAM) == [store.get(keys.POOLS_REV)]
    with pytest.raises(NotFound):
        ipam.delete_pool("10.0.0.0/24")


def test_max_blocks_per_host_makes_it_borrow(store):
    ipam = Ipam(store, max_blocks_per_host=1)
    ipam.create_pool("10.0.0.0/24", block_size=28)
    ipam.auto_assign(1, 0, "b", "host-b")
    ipam.auto_assign(20, 0, "a", "host-a")
    assert {h["host"]: h["blocks"] for h in ipam.usage().hosts} == {"host-a": 1, "host-b": 1}
    assert {h["host"]: h["allocated"] for h in ipam.usage().hosts} == {"host-a": 20,
                                                                      "host-b": 1}


def test_half_done_claim_is_finished_by_the_next_allocation(ipam, store):
    ipam.create_pool("10.0.0.0/26")
    block = net("10.0.0.0/26")
    # A crash after phase 1: the pending affinity exists, the block does not.
    store.commit(Txn().create(keys.affinity("host-a", block), {"state": PENDING}))
    assert [p.kind for p in ipam.check()[0]] == ["broken-affinity"]
    ips, _ = ipam.auto_assign(1, 0, "w", "host-a")
    assert in_net(ips, "10.0.0.0/26")
    assert store.json(keys.affinity("host-a", block)) == {"state": CONFIRMED}
    assert ipam.check()[0] == []


def test_claim_lost_to_another_host_is_dropped(ipam, store):
    ipam.create_pool("10.0.0.0/25", block_size=26)
    block = net("10.0.0.0/26")
    store.commit(Txn().create(keys.affinity("host-a", block), {"state": PENDING}))
    store.commit(Txn().create(keys.block(block), Block.empty(block, "host-b").to_json())
                 .create(keys.affinity("host-b", block), {"state": CONFIRMED}))
    ips, _ = ipam.auto_assign(1, 0, "w", "host-a")
    assert in_net(ips, "10.0.0.64/26")
    assert store.get(keys.affinity("host-a", block)) is None
    assert ipam.check()[0] == []


def test_check_reports_corruption(ipam, store):
    ipam.create_pool("10.0.0.0/24")
    ips, _ = ipam.auto_assign(2, 0, "w", "host-a")
    store.delete_prefix(keys.handle("w"))
    kinds = sorted({p.kind for p in ipam.check()[0]})
    assert kinds == ["address-without-handle"]
    store.commit(Txn().create(keys.handle("ghost"), {"blocks": {"10.0.0.128/26": 1}}))
    assert "handle-without-address" in {p.kind for p in ipam.check()[0]}


def test_threads_never_get_the_same_address(store):
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/26", block_size=28)
    results, errors = [], []

    def worker(n):
        while True:
            try:
                results.extend(ipam.auto_assign(1, 0, f"w{n}-{len(results)}", f"h{n % 3}")[0])
            except ResourceExhausted:
                return
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    assert len(results) == len(set(results)) == 64


def test_stale_confirmed_affinity_is_repaired(ipam, store):
    ipam.create_pool("10.0.0.0/26")
    block = net("10.0.0.0/26")
    # What a crash in the middle of a forced pool removal can leave: a
    # confirmed affinity whose block is gone.
    store.commit(Txn().create(keys.affinity("host-a", block), {"state": CONFIRMED}))
    ips, _ = ipam.auto_assign(1, 0, "w", "host-a")
    assert in_net(ips, "10.0.0.0/26")
    assert Block.from_json(store.json(keys.block(block))).host == "host-a"
    assert ipam.check()[0] == []


def test_blocks_with_many_owners_release_and_drop_in_bounded_transactions(store):
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/24", block_size=24)          # one block of 256
    owners = [f"w{i}" for i in range(180)]
    ips = [ipam.auto_assign(1, 0, o, "host-a")[0][0] for o in owners]
    largest = []
    real_commit = store.commit
    store.commit = lambda txn: largest.append(len(txn.puts) + len(txn.deletes)) or \
        real_commit(txn)
    released, _ = ipam.release_ips(ips[:120])
    assert sorted(released) == sorted(ips[:120])
    assert ipam.delete_pool("10.0.0.0/24", force=True) == 60
    assert max(largest) <= 51 + 1
    assert store.list(keys.HANDLES) == [] and store.list(keys.blocks_prefix()) == []
