"""Packets the kernel sends to an NFLOG group, read over netfilter's netlink.

Owns the netlink socket and the wire format (nfnetlink_log: a bind command,
then one NFULNL_MSG_PACKET message per packet with its prefix, interfaces
and the first bytes of the packet), and turns each message into a
``Sample``: family, prefix, interfaces, and the addresses, protocol and
ports read from the packet's headers. No policy knowledge here: which rule a
prefix names is node.policy.drops' business.

One process per network namespace may bind a group (the kernel refuses a
second one, EBUSY); while nobody is bound, the kernel's NFLOG target finds
no listener and drops the copy at once.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
import struct
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV, NFULA_PAYLOAD, NFULA_PREFIX = 4, 5, 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
COPY_RANGE = 128          # bytes of each packet: enough for the IP and L4 headers
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
IPV6_EXTENSIONS = (0, 43, 60)     # hop-by-hop, routing, destination options


@dataclasses.dataclass
class Sample:
    """One sampled packet, as far as its first COPY_RANGE bytes tell."""
    time: float
    version: int
    prefix: str
    in_interface: str
    out_interface: str
    src: str
    dst: str
    protocol: str
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def config_message(group: int, command: int, seq: int = 1) -> bytes:
    """The netlink message that binds (or unbinds) ``group`` and asks for the
    first COPY_RANGE bytes of each packet."""
    body = struct.pack("BBH", socket.AF_UNSPEC, 0, socket.htons(group))
    body += _attr(NFULA_CFG_CMD, struct.pack("B", command) + b"\0" * 3)
    if command == NFULNL_CFG_CMD_BIND:
        body += _attr(NFULA_CFG_MODE, struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0))
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _attributes(data: bytes) -> dict[int, bytes]:
    out, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, offset)
        if length < 4:
            break
        out[kind & 0x7FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _ifname(attrs: dict[int, bytes], kind: int, names) -> str:
    if kind not in attrs:
        return ""
    index = struct.unpack(">I", attrs[kind][:4])[0]
    try:
        return names(index)
    except OSError:
        return f"if{index}"


def parse_packet(payload: bytes) -> dict | None:
    """Addresses, protocol, ports or ICMP type of an IP packet's first bytes
    (None if it is not IPv4 or IPv6)."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        proto, offset = payload[9], (payload[0] & 0x0F) * 4
        src, dst = payload[12:16], payload[16:20]
    elif version == 6 and len(payload) >= 40:
        proto, offset = payload[6], 40
        src, dst = payload[8:24], payload[24:40]
        while proto in IPV6_EXTENSIONS and offset + 2 <= len(payload):
            proto, offset = payload[offset], offset + (payload[offset + 1] + 1) * 8
    else:
        return None
    out = {"version": version, "src": str(ipaddress.ip_address(src)),
           "dst": str(ipaddress.ip_address(dst)), "protocol": PROTOCOLS.get(proto, str(proto))}
    l4 = payload[offset:]
    if proto in (6, 17, 132) and len(l4) >= 4:
        out["src_port"], out["dst_port"] = struct.unpack(">HH", l4[:4])
    elif proto in (1, 58) and l4:
        out["icmp_type"] = l4[0]
    return out


def parse_message(data: bytes, names=socket.if_indextoname, now=time.time) -> list[Sample]:
    """The samples in one datagram from the socket (several messages may share it)."""
    samples, offset = [], 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            attrs = _attributes(data[offset + 20:offset + length])
            packet = parse_packet(attrs.get(NFULA_PAYLOAD, b""))
            if packet is not None:
                samples.append(Sample(
                    time=now(), prefix=attrs.get(NFULA_PREFIX, b"").split(b"\0")[0].decode(
                        errors="replace"),
                    in_interface=_ifname(attrs, NFULA_IFINDEX_INDEV, names),
                    out_interface=_ifname(attrs, NFULA_IFINDEX_OUTDEV, names), **packet))
        offset += (length + 3) & ~3
    return samples


class Listener:
    """Bound to one NFLOG group in this process's network namespace until closed."""

    def __init__(self, group: int):
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, 0))
            self._configure(NFULNL_CFG_CMD_BIND)
        except OSError:
            self.sock.close()
            raise

    def _configure(self, command: int) -> None:
        self.sock.send(config_message(self.group, command))
        self.sock.settimeout(2.0)
        reply = self.sock.recv(4096)
        self.sock.settimeout(None)
        length, kind = struct.unpack_from("IH", reply)
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("i", reply, 16)[0]
            if code:
                raise OSError(-code, f"binding NFLOG group {self.group}: "
                                     f"{errno.errorcode.get(-code, code)}")

    def receive(self, timeout: float | None = None) -> list[Sample]:
        """The samples of the next datagram ([] after ``timeout`` seconds)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return []
        except OSError as exc:      # ENOBUFS: we fell behind; the kernel dropped some
            if exc.errno == errno.ENOBUFS:
                return []
            raise
        return parse_message(data)

    def close(self) -> None:
        try:
            self.sock.send(config_message(self.group, NFULNL_CFG_CMD_UNBIND))
        except OSError:
            pass
        self.sock.close()
