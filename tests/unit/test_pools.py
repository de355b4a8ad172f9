import ipaddress

import pytest

from calicopy.model.ipam import InvalidInput
from calicopy.model.ipam import Pool, parse_cidr


@pytest.mark.parametrize("text,cidr,normalised", [
    ("10.20.0.0/16", "10.20.0.0/16", False),
    ("10.0.0.1/8", "10.0.0.0/8", True),
    ("10.1.2.3", "10.1.2.3/32", False),
    ("fd80::1/64", "fd80::/64", True),
])
def test_parse_cidr_normalises(text, cidr, normalised):
    net, changed = parse_cidr(text)
    assert (str(net), changed) == (cidr, normalised)


@pytest.mark.parametrize("text", ["10.0.0.0/33", "banana", "", "10.0.0/8", "fd80::/129"])
def test_parse_cidr_rejects(text):
    with pytest.raises(InvalidInput, match="Invalid CIDR"):
        parse_cidr(text)


def test_default_block_sizes_and_small_pools():
    assert Pool.new(ipaddress.ip_network("10.0.0.0/16")).block_size == 26
    assert Pool.new(ipaddress.ip_network("fd80::/64")).block_size == 122
    assert Pool.new(ipaddress.ip_network("10.0.0.0/28")).block_size == 28
    assert Pool.new(ipaddress.ip_network("10.0.0.5/32")).block_size == 32


@pytest.mark.parametrize("cidr,size,message", [
    ("10.0.0.0/16", 19, "between 20 and 32"),
    ("fd80::/64", 26, "between 116 and 128"),
    ("10.0.0.0/28", 26, "larger than the pool"),
])
def test_bad_block_sizes(cidr, size, message):
    with pytest.raises(InvalidInput, match=message):
        Pool.new(ipaddress.ip_network(cidr), size)


def test_blocks_from_visits_every_block_once():
    pool = Pool.new(ipaddress.ip_network("10.0.0.0/24"))
    blocks = list(pool.blocks_from("host-a"))
    assert sorted(blocks) == [ipaddress.ip_network(f"10.0.0.{i}/26") for i in (0, 64, 128, 192)]


def test_blocks_from_is_lazy_for_huge_ipv6_pools():
    pool = Pool.new(ipaddress.ip_network("fd80::/64"))
    first = next(pool.blocks_from("host-a"))
    assert first.prefixlen == 122 and first.subnet_of(pool.cidr)
