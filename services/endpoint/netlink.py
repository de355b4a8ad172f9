"""rtnetlink requests of the endpoint service, encoded and decoded here.

The endpoint service needs a dozen kinds of request (links, veth pairs,
addresses, routes, neighbours), each a fixed C struct and a few attributes.
Encoding them here costs tens of microseconds each; through pyroute2 (0.9,
which runs an asyncio loop per socket and per request and decodes every
message generically) one add's kernel work cost ~18 ms of CPU, most of an
add's, all of it holding the GIL, so concurrent adds queued on it.

Invariants: an ``Rtnl`` is one NETLINK_ROUTE socket, used by one thread at a
time; every request asks for an acknowledgement and returns only once the
kernel has answered it; a refusal raises ``NetlinkError`` with the kernel's
errno (``code``); a dump returns every part, up to NLMSG_DONE.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
import struct

# Message types, flags (linux/netlink.h, linux/rtnetlink.h).
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12

# Attributes.
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO = 1, 3, 4, 5, 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8

IFF_UP = 0x1
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4

_NLMSGHDR = struct.Struct("=IHHII")        # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")      # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")       # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")       # family, dst_len, src_len, tos, table, proto,
#                                            scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")        # family, ifindex, state, flags, type
_RTATTR = struct.Struct("=HH")             # len, type
_ERROR = struct.Struct("=i")
_U32 = struct.Struct("=I")

_RECV_BUFFER = 1 << 16      # the kernel makes dump parts of at most 32 KiB for us


class NetlinkError(OSError):
    """The kernel refused a request: ``code`` is its errno."""

    def __init__(self, code: int, what: str = ""):
        super().__init__(code, f"{what}: {os.strerror(code)}" if what else os.strerror(code))
        self.code = code


@dataclasses.dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    peer_index: int      # IFLA_LINK: a veth's peer (0 if none)
    up: bool


@dataclasses.dataclass(frozen=True)
class Address:
    family: int
    address: str
    prefixlen: int


@dataclasses.dataclass(frozen=True)
class Route:
    family: int
    dst: str            # "a.b.c.d/N" or "x::/N"; "0.0.0.0/0" or "::/0" for a default
    oif: int
    proto: int
    table: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, data: bytes) -> bytes:
    length = _RTATTR.size + len(data)
    return _RTATTR.pack(length, kind) + data + b"\0" * (_align(length) - length)


def _attrs(buffer: bytes, offset: int, end: int) -> dict[int, bytes]:
    found = {}
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(buffer, offset)
        if length < _RTATTR.size:
            break
        found[kind & 0x3FFF] = buffer[offset + _RTATTR.size:offset + length]
        offset += _align(length)
    return found


def _name(text: str) -> bytes:
    return _attr(IFLA_IFNAME, text.encode() + b"\0")


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip_bytes(ip) -> bytes:
    return ipaddress.ip_address(ip).packed


def _family(ip) -> int:
    return socket.AF_INET if ipaddress.ip_address(ip).version == 4 else socket.AF_INET6


def _decode_link(data: bytes) -> Link:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(data, 0)
    attrs = _attrs(data, _IFINFOMSG.size, len(data))
    u32 = (lambda k: _U32.unpack(attrs[k][:4])[0] if k in attrs else 0)
    return Link(index, attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
                _mac_text(attrs.get(IFLA_ADDRESS, b"")), u32(IFLA_MTU), u32(IFLA_LINK),
                bool(flags & IFF_UP))


class Rtnl:
    """One NETLINK_ROUTE socket: this process's namespace's, or ``sock`` (one
    made inside another namespace: calicopy.netns.netlink_socket). With
    ``strict``, the kernel filters dumps by what they ask for (it is filtered
    here again either way)."""

    def __init__(self, sock: socket.socket | None = None, strict: bool = False):
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                          socket.NETLINK_ROUTE)
        try:
            self.sock.bind((0, 0))
            if strict:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0
        self._buffer = bytearray(_RECV_BUFFER)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    # The exchange -------------------------------------------------------------

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        """Send one request; the messages answering it (a dump's parts, or a
        get's answer), once the kernel has acknowledged or finished it."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        dump = (flags & NLM_F_DUMP) == NLM_F_DUMP
        flags |= NLM_F_REQUEST | (0 if dump else NLM_F_ACK)
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body)
        found = []
        view = memoryview(self._buffer)
        while True:
            size = self.sock.recv_into(view)
            offset = 0
            while offset + _NLMSGHDR.size <= size:
                length, mtype, _, mseq, _ = _NLMSGHDR.unpack_from(self._buffer, offset)
                if length < _NLMSGHDR.size:
                    break
                payload = bytes(self._buffer[offset + _NLMSGHDR.size:offset + length])
                offset += _align(length)
                if mseq != seq:
                    continue        # the answer to an earlier request we gave up on
                if mtype == NLMSG_ERROR:
                    code = -_ERROR.unpack_from(payload, 0)[0]
                    if code:
                        raise NetlinkError(code, what)
                    return found
                if mtype == NLMSG_DONE:
                    if len(payload) >= _ERROR.size and _ERROR.unpack_from(payload, 0)[0] < 0:
                        raise NetlinkError(-_ERROR.unpack_from(payload, 0)[0], what)
                    return found
                found.append((mtype, payload))

    # Links --------------------------------------------------------------------

    def link_by_name(self, name: str) -> Link | None:
        try:
            answer = self._request(RTM_GETLINK, 0, _IFINFOMSG.pack(0, 0, 0, 0, 0) + _name(name),
                                   f"look up {name}")
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return next((_decode_link(data) for kind, data in answer if kind == RTM_NEWLINK), None)

    def links(self) -> list[Link]:
        answer = self._request(RTM_GETLINK, NLM_F_DUMP, _IFINFOMSG.pack(0, 0, 0, 0, 0),
                               "list links")
        return [_decode_link(data) for kind, data in answer if kind == RTM_NEWLINK]

    def add_veth(self, name: str, mac: str, peer_name: str, peer_mac: str, mtu: int = 0,
                 peer_netns_fd: int | None = None) -> None:
        """A veth pair; the peer in the namespace ``peer_netns_fd`` if given.
        Both ends get ``mtu`` when it is not 0."""
        peer = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _name(peer_name) + \
            _attr(IFLA_ADDRESS, _mac_bytes(peer_mac))
        mine = _name(name) + _attr(IFLA_ADDRESS, _mac_bytes(mac))
        if mtu:
            peer += _attr(IFLA_MTU, _U32.pack(mtu))
            mine += _attr(IFLA_MTU, _U32.pack(mtu))
        if peer_netns_fd is not None:
            peer += _attr(IFLA_NET_NS_FD, _U32.pack(peer_netns_fd))
        info = _attr(IFLA_INFO_KIND, b"veth\0") + \
            _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                      _IFINFOMSG.pack(0, 0, 0, 0, 0) + mine + _attr(IFLA_LINKINFO, info),
                      f"create {name}")

    def set_link(self, index: int, up: bool = False, mtu: int = 0) -> None:
        body = _IFINFOMSG.pack(0, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)
        if mtu:
            body += _attr(IFLA_MTU, _U32.pack(mtu))
        self._request(RTM_SETLINK, 0, body, f"change link {index}")

    def del_link(self, index: int) -> None:
        self._request(RTM_DELLINK, 0, _IFINFOMSG.pack(0, 0, index, 0, 0),
                      f"delete link {index}")

    # Addresses ----------------------------------------------------------------

    def addresses(self, index: int) -> list[Address]:
        answer = self._request(RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(0, 0, 0, 0, index),
                               f"list addresses of link {index}")
        found = []
        for kind, data in answer:
            family, prefixlen, _, _, owner = _IFADDRMSG.unpack_from(data, 0)
            if kind != RTM_NEWADDR or owner != index:
                continue
            attrs = _attrs(data, _IFADDRMSG.size, len(data))
            raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
            if raw:
                found.append(Address(family, str(ipaddress.ip_address(raw)), prefixlen))
        return found

    def _address(self, kind: int, flags: int, index: int, ip, prefixlen: int,
                 ifa_flags: int, what: str) -> None:
        raw = _ip_bytes(ip)
        family = _family(ip)
        body = _IFADDRMSG.pack(family, prefixlen, ifa_flags, RT_SCOPE_UNIVERSE, index)
        if family == socket.AF_INET:
            body += _attr(IFA_LOCAL, raw)
        body += _attr(IFA_ADDRESS, raw)
        self._request(kind, flags, body, what)

    def add_address(self, index: int, ip, prefixlen: int, ifa_flags: int = 0) -> None:
        self._address(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, ip, prefixlen, ifa_flags,
                      f"add {ip}/{prefixlen}")

    def del_address(self, index: int, ip, prefixlen: int) -> None:
        self._address(RTM_DELADDR, 0, index, ip, prefixlen, 0, f"delete {ip}/{prefixlen}")

    # Routes -------------------------------------------------------------------

    def routes(self, family: int, oif: int, table: int = RT_TABLE_MAIN) -> list[Route]:
        """The routes of ``table`` out of ``oif``."""
        body = _RTMSG.pack(family, 0, 0, 0, table, 0, 0, 0, 0) + \
            _attr(RTA_OIF, _U32.pack(oif))
        found = []
        for kind, data in self._request(RTM_GETROUTE, NLM_F_DUMP, body, "list routes"):
            fam, dst_len, _, _, rtm_table, proto, _, _, _ = _RTMSG.unpack_from(data, 0)
            attrs = _attrs(data, _RTMSG.size, len(data))
            out = _U32.unpack(attrs[RTA_OIF][:4])[0] if RTA_OIF in attrs else 0
            in_table = _U32.unpack(attrs[RTA_TABLE][:4])[0] if RTA_TABLE in attrs else rtm_table
            if kind != RTM_NEWROUTE or fam != family or out != oif or in_table != table:
                continue
            dst = str(ipaddress.ip_address(attrs[RTA_DST])) if RTA_DST in attrs else \
                ("0.0.0.0" if family == socket.AF_INET else "::")
            found.append(Route(fam, f"{dst}/{dst_len}", out, proto, in_table))
        return found

    def _route_body(self, dst: str, oif: int, gateway: str | None, scope: int,
                    proto: int, kind: int) -> bytes:
        net = ipaddress.ip_network(dst)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, proto, scope, kind, 0)
        if net.prefixlen:
            body += _attr(RTA_DST, net.network_address.packed)
        body += _attr(RTA_OIF, _U32.pack(oif))
        if gateway:
            body += _attr(RTA_GATEWAY, _ip_bytes(gateway))
        return body

    def replace_route(self, dst: str, oif: int, gateway: str | None = None,
                      scope: int = RT_SCOPE_UNIVERSE, proto: int = RTPROT_STATIC) -> None:
        """``dst`` ("a.b.c.d/N") through ``oif`` in the main table, made or replaced."""
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
                      self._route_body(dst, oif, gateway, scope, proto, RTN_UNICAST),
                      f"route {dst}")

    def del_route(self, dst: str, oif: int, proto: int = 0) -> None:
        """Delete the main table's route to ``dst`` through ``oif`` (of
        protocol ``proto``, unless 0), whatever its scope."""
        self._request(RTM_DELROUTE, 0,
                      self._route_body(dst, oif, None, RT_SCOPE_NOWHERE, proto, 0),
                      f"delete the route to {dst}")

    # Neighbours ---------------------------------------------------------------

    def neighbours(self, family: int, index: int) -> list[str]:
        """The addresses that have a neighbour entry on link ``index``."""
        # A strict socket refuses an index in the header: it goes in NDA_IFINDEX.
        body = _NDMSG.pack(family, 0, 0, 0, 0) + _attr(NDA_IFINDEX, _U32.pack(index))
        answer = self._request(RTM_GETNEIGH, NLM_F_DUMP, body,
                               f"list neighbours of link {index}")
        found = []
        for kind, data in answer:
            fam, owner, _, _, _ = _NDMSG.unpack_from(data, 0)
            attrs = _attrs(data, _NDMSG.size, len(data))
            if kind == RTM_NEWNEIGH and fam == family and owner == index and NDA_DST in attrs:
                found.append(str(ipaddress.ip_address(attrs[NDA_DST])))
        return found

    def replace_neighbour(self, index: int, ip, mac: str, state: int) -> None:
        body = _NDMSG.pack(_family(ip), index, state, 0, 0) + _attr(NDA_DST, _ip_bytes(ip)) + \
            _attr(NDA_LLADDR, _mac_bytes(mac))
        self._request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"neighbour {ip}")

    def del_neighbour(self, index: int, ip) -> None:
        body = _NDMSG.pack(_family(ip), index, 0, 0, 0) + _attr(NDA_DST, _ip_bytes(ip))
        self._request(RTM_DELNEIGH, 0, body, f"delete neighbour {ip}")
