"""The two BPF programs of IP-in-IP (protocol 4, the 20-byte header of RFC 2003).

- ``encapsulator(local, remote)`` (a route's ``encap bpf xmit``): puts an
  outer IPv4 header (``local`` -> ``remote``, protocol 4, DF, TTL 64) in
  front of each packet the route sends and has the kernel route it again, now
  to ``remote`` over the underlay. One program per remote host: the addresses
  are part of its code, so the route's program name says everything it does.
- ``decapsulator(hosts, local, tunnel)`` (a tc ingress filter on the underlay
  interface): takes an IP-in-IP packet addressed to ``local`` whose outer
  source is in ``hosts`` (the cluster's nodes), strips the outer header and
  hands the inner packet in on ``tunnel`` (tunl0), as the kernel's own ipip
  device would. Anything else goes on untouched (the policy agent drops any
  IP-in-IP packet from elsewhere).

Why BPF and not the kernel's ipip device: it also works on kernels built
without IP-in-IP (CONFIG_NET_IPIP), and it is the same packets on the wire.
The kernel (lwt_bpf.c) only marks segmentation-offload (GSO) packets as
IP-in-IP when the pushed header says protocol 0, so the header is pushed with
protocol 0 and the protocol byte set to 4 right after; the checksum is
computed for the final header.
"""

from __future__ import annotations

import socket

from node.ipip import bpf
from node.ipip.bpf import Asm

OVERHEAD = 20                 # the outer IPv4 header
_LWT_REROUTE, _LWT_DROP = 128, 2
_TC_OK, _TC_SHOT = 0, 2
_ENCAP_IP = 2                 # BPF_LWT_ENCAP_IP
_ADJ_ROOM_MAC, _ADJ_ROOM_FIXED_GSO, _F_INGRESS = 1, 1, 1
_ETH_HLEN = 14


def _imm(ip: str) -> int:
    """The 32-bit immediate whose little-endian store writes ``ip`` in order."""
    return int.from_bytes(socket.inet_aton(ip), "little", signed=True)


def _words(ip: str) -> int:
    raw = socket.inet_aton(ip)
    return (raw[0] << 8 | raw[1]) + (raw[2] << 8 | raw[3])


def encap_code(local: str, remote: str) -> bytes:
    # Header on the stack at fp-32: ver/ihl, tos 0, total length, id 0,
    # DF, TTL 64, protocol (0 while pushing), checksum, source, destination.
    fixed = 0x4500 + 0x4000 + (64 << 8 | 4) + _words(local) + _words(remote)
    a = Asm()
    a.movr(6, 1)
    a.ldx(4, 7, 6, 0).add(7, OVERHEAD)            # skb->len + 20
    # A GSO packet may be longer than 65535: 0 then means "the packet's length".
    a.jgt(7, 0xFFFF, "long").ja("length")
    a.label("long").mov(7, 0)
    a.label("length")
    a.movr(8, 7).add(8, fixed)                     # one's complement sum, folded twice
    a.movr(9, 8).rsh(9, 16).and_(8, 0xFFFF).addr(8, 9)
    a.movr(9, 8).rsh(9, 16).and_(8, 0xFFFF).addr(8, 9)
    a.xor(8, 0xFFFF).and_(8, 0xFFFF).be16(8)
    a.be16(7)
    a.st(1, 10, -32, 0x45).st(1, 10, -31, 0).stx(2, 10, 7, -30)
    a.st(2, 10, -28, 0).st(1, 10, -26, 0x40).st(1, 10, -25, 0)
    a.st(1, 10, -24, 64).st(1, 10, -23, 0).stx(2, 10, 8, -22)
    a.st(4, 10, -20, _imm(local)).st(4, 10, -16, _imm(remote))
    a.movr(1, 6).mov(2, _ENCAP_IP).movr(3, 10).add(3, -32).mov(4, OVERHEAD)
    a.call(bpf.LWT_PUSH_ENCAP).jne(0, 0, "drop")
    a.st(1, 10, -40, socket.IPPROTO_IPIP)
    a.movr(1, 6).mov(2, 9).movr(3, 10).add(3, -40).mov(4, 1).mov(5, 0)
    a.call(bpf.SKB_STORE_BYTES).jne(0, 0, "drop")
    a.mov(0, _LWT_REROUTE).exit()
    a.label("drop").mov(0, _LWT_DROP).exit()
    return a.code()


def decap_code(hosts_fd: int, local: str, tunnel_index: int) -> bytes:
    # The outer header is read to fp-24 (20 bytes after the Ethernet header).
    a = Asm()
    a.movr(6, 1)
    a.ldx(4, 2, 6, 16).jne(2, socket.htons(0x0800), "pass")       # skb->protocol: IPv4
    a.movr(1, 6).mov(2, _ETH_HLEN).movr(3, 10).add(3, -24).mov(4, 20)
    a.call(bpf.SKB_LOAD_BYTES).jne(0, 0, "pass")
    a.ldx(1, 2, 10, -24).jne(2, 0x45, "pass")                     # no options
    a.ldx(1, 2, 10, -15).jne(2, socket.IPPROTO_IPIP, "pass")
    a.ldx(1, 2, 10, -18).and_(2, 0x3F).jne(2, 0, "pass")         # not a fragment
    a.ldx(1, 2, 10, -17).jne(2, 0, "pass")
    a.ldx(4, 2, 10, -8).jne(2, _imm(local), "pass")               # to us
    a.ldx(4, 2, 10, -12).stx(4, 10, 2, -32)                       # from a node?
    a.ld_map(1, hosts_fd).movr(2, 10).add(2, -32).call(bpf.MAP_LOOKUP_ELEM).jeq(0, 0, "pass")
    a.movr(1, 6).mov(2, -OVERHEAD).mov(3, _ADJ_ROOM_MAC).mov(4, _ADJ_ROOM_FIXED_GSO)
    a.call(bpf.SKB_ADJUST_ROOM).jne(0, 0, "drop")
    a.mov(1, tunnel_index).mov(2, _F_INGRESS).call(bpf.REDIRECT).exit()
    a.label("drop").mov(0, _TC_SHOT).exit()
    a.label("pass").mov(0, _TC_OK).exit()
    return a.code()


def encapsulator(local: str, remote: str) -> int:
    return bpf.load(bpf.PROG_LWT_XMIT, encap_code(local, remote), "calico_ipip_tx")


def decapsulator(hosts: bpf.HashMap, local: str, tunnel_index: int) -> int:
    return bpf.load(bpf.PROG_SCHED_CLS, decap_code(hosts.fd, local, tunnel_index),
                    "calico_ipip_rx")
