"""The node's IP-in-IP: keeps tunl0, the decapsulator and the routes through
tunl0 in step with etcd (node.ipip.plan decides, node.ipip.dataplane does).

Run by the shared watch loop (calicopy.datastore.watchloop): a changed pool
(its mode), block, allocation or node record takes effect at once, with no
restart; a full pass every RESYNC seconds repairs the kernel and re-decides
which hosts are on a connected subnet (every IDLE_RESYNC while no pool uses
IP-in-IP). While no pool uses IP-in-IP (the
default), only a pool's change can matter: the agent then watches only the
pools (its own node record is read at each full pass) and reads nothing
else, so its cost does not grow with the cluster's hosts and workloads. The tunnel's address comes from IPAM
(an IP-in-IP pool, this host's block, handle ``<node>/ipip-tunnel-addr``) and
is given back when no pool uses IP-in-IP any more.
"""

from __future__ import annotations

import ipaddress
import logging
import threading

from calicopy import underlay
from calicopy.datastore import keys
from calicopy.datastore.store import Store
from calicopy.datastore.watchloop import WatchLoop
from calicopy.errors import CalicoError, Unavailable
from calicopy.model import bgp, ipam
from calicopy.model.record import BadRecord, decode
from node.ipip import programs
from node.ipip.dataplane import IpipDataplane
from node.ipip.plan import plan

log = logging.getLogger("calico-ipip")

RESYNC = 10.0
IDLE_RESYNC = 60.0      # while no pool uses IP-in-IP: nothing to repair but a teardown


def tunnel_handle(node: str) -> str:
    return f"{node}/ipip-tunnel-addr"


class IpipAgent:
    """``ipam`` is the IPAM service's client (calicopy.api.ipam.IpamClient)."""

    def __init__(self, store: Store, node: str, ipam_client, dataplane=None,
                 on_link=underlay.on_link, mtu_of=underlay.mtu_of):
        self.store, self.node, self.ipam = store, node, ipam_client
        self.dataplane = dataplane or IpipDataplane()
        self.on_link, self.mtu_of = on_link, mtu_of
        self._address: str | None = None      # the tunnel's, once known
        self._active = None                   # unknown at start: tear down if not wanted
        self._loop: WatchLoop | None = None

    def _follow(self) -> None:
        """Watch everything while a tunnel is wanted, else only the pools."""
        if self._loop is not None:
            self._loop.watch_prefix(keys.pools_prefix() if self._active is False
                                    else keys.PREFIX)

    def sync(self, full: bool = False, events=()) -> None:
        pools = ipam.read_pools(self.store)
        if any(p.version == 4 and p.ipip for p in pools):
            nodes = {n.name: n.ipv4 for n in bgp.read_nodes(self.store)}
            blocks = [kv.json() for kv in self.store.list(keys.blocks_prefix(4))]
        else:       # no tunnel: this node's address (to tear down its state) is all
            nodes, blocks = self._own_address(), []
        wanted = plan(self.node, nodes, pools, blocks, self.on_link)
        local = nodes.get(self.node, "")
        if not wanted.tunnel:
            if self._active is not False:
                if self.dataplane.teardown(local):
                    log.info("no pool uses IP-in-IP: tunl0 and its routes removed")
                self._release()
                self._active = False
            self._follow()
            return
        address = self._tunnel_address(wanted.pools, full)
        stats = self.dataplane.apply(wanted, local, address,
                                     self.mtu_of(local) - programs.OVERHEAD)
        if any(stats.values()) or not self._active:
            log.info("IP-in-IP: tunl0 %s, %d route(s) through it: %s", address or "(none)",
                     len(wanted.routes), stats)
        self._active = True
        self._follow()

    def _tunnel_address(self, pools: list[str], full: bool) -> str:
        """The tunnel's address: the one this node holds in an IP-in-IP pool,
        else a new one; other addresses under the handle go back."""
        if self._address and not full and self._in(self._address, pools):
            return self._address
        handle = tunnel_handle(self.node)
        held = [a["ip"] for a in self.ipam.handle_allocations(handle)]
        keep = next((ip for ip in held if self._in(ip, pools)), None)
        stale = [ip for ip in held if ip != keep]
        if stale:
            self.ipam.release_ips(stale, handle)
        if keep is None:
            try:
                v4, _ = self.ipam.auto_assign(1, 0, handle, self.node,
                                              {"node": self.node, "purpose": "ipip-tunnel"},
                                              pools, [])
                keep = v4[0] if v4 else None
            except Unavailable:
                raise
            except CalicoError as exc:     # e.g. every IP-in-IP pool disabled or full
                log.warning("tunl0 gets no address (%s); the host's own traffic to remote "
                            "workloads leaves with its underlay address", exc)
        self._address = keep
        return keep or ""

    @staticmethod
    def _in(ip: str, pools: list[str]) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in ipaddress.ip_network(p) for p in pools)

    def _release(self) -> None:
        if self._address is not None or self._active is None:
            self.ipam.release_by_handle(tunnel_handle(self.node))
        self._address = None

    def _own_address(self) -> dict[str, str]:
        kv = self.store.get(keys.node(self.node))
        try:
            node = decode(kv, bgp.Node.from_json) if kv is not None else None
        except BadRecord:       # as read_nodes does: treated as absent
            node = None
        return {self.node: node.ipv4} if node is not None and node.ipv4 else {}

    def relevant(self, response) -> bool:
        """Whether a watch response may change the plan (see the module's
        docstring); an ended watch always does."""
        events = getattr(response, "events", None)
        if events is None or self._active is not False:
            return keys.changes_configuration(response)
        return any(e.key.decode().startswith(keys.pools_prefix()) for e in events)

    def run(self, stop: threading.Event) -> None:
        every = lambda: IDLE_RESYNC if self._active is False else RESYNC   # noqa: E731
        self._loop = WatchLoop(self.store, keys.PREFIX, self.sync, log=log, resync=every,
                               poll=every, settle=0.05, relevant=self.relevant)
        self._loop.run(stop)
