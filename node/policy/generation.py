"""The nf_tables ruleset generation of this network namespace: a counter the
kernel bumps once for every committed change of the ruleset (each
`iptables-nft-restore` transaction, each iptables-nft command that writes;
not reads, not ipsets). Reading it is one netlink round trip, no process, so
the agent can ask before every pass whether anyone changed the rules since it
last checked its hooks, and start `iptables -C` only when someone did.

The request is built and parsed here, over a plain netlink socket: through
pyroute2 (an asyncio loop per request) one read cost more than the rest of
an incremental pass.

``read()`` is None where the counter cannot be had (no nf_tables, the legacy
backend's tables): the caller then checks the slow way every time.
"""

from __future__ import annotations

import logging
import socket
import struct

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN, NFT_MSG_NEWGEN = 16, 15
NFTA_GEN_ID = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_HEADER = struct.Struct("=IHHII")        # nlmsghdr: length, type, flags, seq, pid
_NFGENMSG = struct.Struct("=BBH")        # family, version, resource id


def request(seq: int) -> bytes:
    """A GETGEN request (family unspecified: the generation is per namespace)."""
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN,
                        NLM_F_REQUEST, seq, 0) + body


def parse(data: bytes, seq: int) -> int:
    """The generation in the answer to request ``seq``; OSError for a refusal."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, got_seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if got_seq == seq:
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                raise OSError(-code, "nf_tables refused GETGEN")
            if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN:
                at, end = offset + _HEADER.size + _NFGENMSG.size, offset + length
                while at + 4 <= end:
                    size, attr = struct.unpack_from("=HH", data, at)
                    if size < 4:
                        break
                    if attr & 0x3fff == NFTA_GEN_ID:
                        return struct.unpack_from(">I", data, at + 4)[0]
                    at += (size + 3) & ~3
        offset += (length + 3) & ~3
    raise ValueError("no generation in nf_tables' answer")


class RulesetGeneration:
    """Reads the counter over one netlink socket, opened on first use (in the
    namespace of the thread that first reads: the agent's, the host's)."""

    def __init__(self):
        self._sock: socket.socket | None = None
        self._seq = 0
        self._broken = False

    def read(self) -> int | None:
        if self._broken:
            return None
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                           NETLINK_NETFILTER)
                self._sock.settimeout(5.0)
                self._sock.bind((0, 0))
            self._seq = (self._seq + 1) & 0xffffffff
            self._sock.send(request(self._seq))
            while True:         # skip any answer to an earlier request that timed out
                try:
                    return parse(self._sock.recv(65536), self._seq)
                except ValueError:
                    continue
        except Exception as exc:       # no nf_tables here: check the hooks every pass
            log.warning("no nf_tables ruleset generation (%s): the iptables hooks are "
                        "checked at every pass", exc)
            self._broken = True
            self.close()
            return None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
