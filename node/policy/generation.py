"""The nf_tables ruleset generation of this network namespace: a counter the
kernel bumps once for every committed change of the ruleset (each
`iptables-nft-restore` transaction, each iptables-nft command that writes;
not reads, not ipsets). Reading it is one netlink round trip, no process, so
the agent can ask before every pass whether anyone changed the rules since it
last checked its hooks, and start `iptables -C` only when someone did.

``read()`` is None where the counter cannot be had (no nf_tables, the legacy
backend's tables): the caller then checks the slow way every time.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class RulesetGeneration:
    """Reads the counter over one netlink socket, opened on first use (in the
    namespace of the thread that first reads: the agent's, the host's)."""

    def __init__(self):
        self._sock = None
        self._broken = False

    def read(self) -> int | None:
        if self._broken:
            return None
        try:
            from pyroute2.netlink import NLM_F_REQUEST
            from pyroute2.netlink.nfnetlink.nftsocket import (NFT_MSG_GETGEN, NFTSocket,
                                                              nft_gen_msg)
            if self._sock is None:
                self._sock = NFTSocket()
            msg = nft_gen_msg()
            msg["nfgen_family"] = 0
            reply = self._sock.request_get(msg, msg_type=NFT_MSG_GETGEN,
                                           msg_flags=NLM_F_REQUEST)
            return int(reply[0].get_attr("NFTA_GEN_ID"))
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
