"""A new host's concurrent first allocations, through two IPAM replicas, claim
one block between them; a claim that loses its second phase removes only its
own pending affinity."""

import ipaddress

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.ipam import CONFIRMED, PENDING, Block
from services.ipam.allocator import Ipam
from tests.fakes import MemoryStore
from tests.unit.hooks import HookedStore, creates


@pytest.fixture
def store():
    s = MemoryStore()
    Ipam(s).create_pool("10.0.0.0/24")
    return s


def first_block(store, host):
    """The block a claim for ``host`` tries first."""
    return next(Ipam(store).pools.list()[0][0].blocks_from(host))


def blocks_of(store, host):
    return sorted(str(keys.parse_block(kv.key)) for kv in store.list(keys.blocks_prefix())
                  if Block.from_json(kv.json()).host == host)


def same_block(ips):
    return len({ipaddress.ip_network(f"{ip}/26", strict=False) for ip in ips}) == 1


def test_a_claim_made_meanwhile_by_the_other_replica_is_used_not_doubled(store):
    """B claims a block for the host while A is about to claim one: A takes
    B's block instead of a second one."""
    hooked = HookedStore(store)
    a, b = Ipam(hooked), Ipam(store)
    got = []
    hooked.before_commit(creates("/ipam/affinity/", "pending"),
                         lambda: got.extend(b.auto_assign(1, 0, "wb", "host-a")[0]))
    got += a.auto_assign(1, 0, "wa", "host-a")[0]
    assert hooked.fired()
    assert len(blocks_of(store, "host-a")) == 1 and same_block(got) and len(set(got)) == 2
    assert a.check()[0] == []


def test_a_block_the_other_replica_claimed_just_before_is_adopted(store):
    """B's whole claim lands after A found the host blockless but before A
    lists the pool's blocks: A sees the block taken, and takes it over
    through its host's affinity rather than claiming the next one."""
    hooked = HookedStore(store)
    a, b = Ipam(hooked), Ipam(store)
    got = []
    hooked.before_list(lambda prefix: prefix == keys.blocks_prefix(4),
                       lambda: got.extend(b.auto_assign(1, 0, "wb", "host-a")[0]))
    got += a.auto_assign(1, 0, "wa", "host-a")[0]
    assert hooked.fired()
    assert len(blocks_of(store, "host-a")) == 1 and same_block(got) and len(set(got)) == 2
    assert a.check()[0] == []


def test_a_lost_second_phase_keeps_the_affinity_another_claim_confirmed(store):
    """A writes its pending affinity; B, serving the same host, finishes that
    claim (block created, affinity confirmed); A's second phase then fails.
    A must neither delete the confirmed affinity nor claim a second block."""
    hooked = HookedStore(store)
    a, b = Ipam(hooked), Ipam(store)
    got = []
    hooked.after_commit(creates("/ipam/affinity/", "pending"),
                        lambda: got.extend(b.auto_assign(1, 0, "wb", "host-a")[0]))
    got += a.auto_assign(1, 0, "wa", "host-a")[0]
    assert hooked.fired()
    block = first_block(store, "host-a")
    assert blocks_of(store, "host-a") == [str(block)] and same_block(got)
    assert store.json(keys.affinity("host-a", block)) == {"state": CONFIRMED}
    assert a.check()[0] == []


def test_a_lost_second_phase_drops_only_its_own_pending_claim(store):
    """Another host takes the block between A's two phases: A removes its
    own pending affinity (by its revision) and claims the next block."""
    hooked = HookedStore(store)
    a, other = Ipam(hooked), Ipam(store)
    block = first_block(store, "host-a")

    def other_host_takes_it():      # creates the block, for host-b
        other.assign_ip(str(block.network_address + 1), "x", "host-b")
    hooked.after_commit(creates(keys.affinity("host-a", block), "pending"),
                        other_host_takes_it)
    ips, _ = a.auto_assign(1, 0, "wa", "host-a")
    assert hooked.fired()
    assert store.get(keys.affinity("host-a", block)) is None
    assert ipaddress.ip_address(ips[0]) not in block
    assert len(blocks_of(store, "host-a")) == 1 and blocks_of(store, "host-b") == [str(block)]
    assert a.check()[0] == []


def test_a_claim_it_went_to_finish_but_its_owner_finished_first_is_used(store):
    """B's first phase meets A's pending affinity, and B goes to finish A's
    claim; A's own second phase lands first. B uses that block."""
    hooked = HookedStore(store)
    b = Ipam(hooked)
    block = first_block(store, "host-a")
    aff_key = keys.affinity("host-a", block)

    def a_first_phase():
        store.commit(Txn().create(aff_key, {"state": PENDING}))

    def a_second_phase():
        store.commit(Txn().create(keys.block(block), Block.empty(block, "host-a").to_json())
                     .update(store.get(aff_key), {"state": CONFIRMED}))
    hooked.before_commit(creates(aff_key, "pending"), a_first_phase)
    hooked.before_commit(creates(keys.block(block)), a_second_phase)
    ips, _ = b.auto_assign(1, 0, "wb", "host-a")
    assert hooked.fired()
    assert blocks_of(store, "host-a") == [str(block)] and same_block(ips + [str(block[1])])
    assert b.check()[0] == []
