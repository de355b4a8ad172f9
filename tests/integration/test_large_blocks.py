"""Blocks with more owners than one etcd transaction may touch (real etcd
refuses more than 128 operations in one)."""

from calicopy.datastore import keys
from services.ipam.allocator import Ipam


def test_release_and_forced_pool_removal_of_a_crowded_block(store):
    ipam = Ipam(store)
    ipam.create_pool("10.90.0.0/24", block_size=24)           # one block of 256
    ips = [ipam.auto_assign(1, 0, f"w{i}", "host-a")[0][0] for i in range(200)]
    released, missing = ipam.release_ips(ips[:150])
    assert sorted(released) == sorted(ips[:150]) and missing == []
    assert ipam.delete_pool("10.90.0.0/24", force=True) == 50
    assert store.list(keys.HANDLES) == [] and store.list(keys.blocks_prefix()) == []
    assert ipam.check()[0] == []
