"""Which routes go through tunl0 (node.ipip.plan), and the BPF programs'
assembly (the kernel's verifier checks them in the system tests)."""

import ipaddress

from calicopy.model.ipam import Block, Pool
from node.ipip import programs
from node.ipip.plan import plan

NODES = {"h1": "172.30.0.2", "h2": "172.30.0.3", "h3": "172.30.1.2"}


def on_first_subnet(ip):
    return ip.startswith("172.30.0.")


def pool(cidr, mode="never"):
    return Pool.new(ipaddress.ip_network(cidr), ipip_mode=mode)


def block(cidr, host, borrowed=()):
    b = Block.empty(ipaddress.ip_network(cidr), host)
    b.allocate(1, f"{host}/w", host, {})
    for other in borrowed:
        b.allocate(1, f"{other}/w", other, {})
    return b.to_json()


BLOCKS = [block("10.20.0.0/26", "h1"), block("10.20.0.64/26", "h2", borrowed=["h3"]),
          block("10.20.1.0/26", "h3", borrowed=["h1"]), block("10.30.0.0/26", "h3")]


def test_no_ip_in_ip_pool_no_tunnel():
    assert not plan("h1", NODES, [pool("10.20.0.0/16")], BLOCKS, on_first_subnet).tunnel
    assert not plan("h1", NODES, [pool("fd80::/64")], BLOCKS, on_first_subnet).tunnel
    assert not plan("h9", NODES, [pool("10.20.0.0/16", "always")], BLOCKS,
                    on_first_subnet).tunnel          # a node with no IPv4 address


def test_always_routes_every_other_host_s_blocks_and_borrowed_addresses():
    result = plan("h1", NODES, [pool("10.20.0.0/16", "always"), pool("10.30.0.0/16")],
                  BLOCKS, on_first_subnet)
    assert result.tunnel and result.pools == ["10.20.0.0/16"]
    assert result.routes == {"10.20.0.64/26": "172.30.0.3", "10.20.1.0/26": "172.30.1.2",
                             "10.20.0.65/32": "172.30.1.2"}     # h3's address in h2's block
    assert result.hosts == {"172.30.0.3", "172.30.1.2"}


def test_cross_subnet_encapsulates_only_towards_other_subnets():
    result = plan("h1", NODES, [pool("10.20.0.0/16", "cross-subnet")], BLOCKS,
                  on_first_subnet)
    assert result.routes == {"10.20.1.0/26": "172.30.1.2", "10.20.0.65/32": "172.30.1.2"}
    far = plan("h3", NODES, [pool("10.20.0.0/16", "cross-subnet")], BLOCKS,
               lambda ip: ip.startswith("172.30.1."))
    # h1's borrowed address in h3's own block goes back to h1.
    assert far.routes == {"10.20.0.0/26": "172.30.0.2", "10.20.0.64/26": "172.30.0.3",
                          "10.20.1.1/32": "172.30.0.2"}


def test_programs_assemble_to_whole_instructions():
    code = programs.encap_code("172.30.0.2", "172.30.1.2")
    assert len(code) % 8 == 0 and code[-8] == 0x95               # ends with exit
    assert programs.encap_code("172.30.0.2", "172.30.1.2") == code
    assert programs.encap_code("172.30.0.2", "172.30.1.3") != code
    assert len(programs.decap_code(3, "172.30.0.2", 5)) % 8 == 0
