"""IP-in-IP in this host's kernel: the tunl0 device, the decapsulator on the
underlay interface, and the routes through tunl0.

``apply`` makes the kernel match a plan (node.ipip.plan) and is idempotent:
it reads what is there and changes only what differs. What it owns, and how
it is told apart from everyone else's:

- ``tunl0``: the kernel's own ipip device if the kernel has one, else a
  persistent TUN device of that name (never read: packets for it are
  encapsulated before they would reach it, and decapsulated ones are handed
  in on it); MTU = the underlay's minus 20; its only address is the node's
  tunnel address from an IP-in-IP pool (a /32), as in the original system,
  so the host's own traffic to remote workloads has a pool source address;
- routes with protocol ``ROUTE_PROTOCOL`` (81) in the main table:
  ``<block> via <host> dev tunl0 onlink encap bpf xmit <encapsulator>``,
  metric 0, so they win over BIRD's routes to the same blocks (metric 32);
  the program's name says which hosts it encapsulates between, so a route
  whose name is right is right;
- a tc filter (clsact ingress, priority ``FILTER_PRIO``) named
  ``calico-ipip-decap`` on the interface holding the node's address, and its
  map of the hosts IP-in-IP is taken from.

``teardown`` removes all of it (no pool uses IP-in-IP any more).
"""

from __future__ import annotations

import logging
import os
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from calicopy import underlay
from calicopy.errors import CalicoError
from node.ipip import bpf, programs
from node.ipip.plan import Plan

log = logging.getLogger(__name__)

TUNNEL = "tunl0"
ROUTE_PROTOCOL = 81
FILTER_PRIO = 7
FILTER_NAME = "calico-ipip-decap"
_INGRESS = "ffff:fff2"
_INGRESS_ID = 0xFFFFFFF2
_ONLINK = 4
_MAX_HOSTS = 65536


class DataplaneError(CalicoError):
    """The kernel refused a change; says which."""


def encap_name(local: str, remote: str) -> str:
    return f"calico-ipip to {remote} from {local}"


class IpipDataplane:
    """Keeps the programs it loaded (their file descriptors) between passes."""

    def __init__(self):
        self._encaps: dict[tuple[str, str], int] = {}
        self._hosts: bpf.HashMap | None = None
        self._decap: tuple[int, str, int] | None = None   # (underlay index, local, tunnel)

    def apply(self, plan: Plan, local: str, address: str, mtu: int) -> dict[str, int]:
        with IPRoute() as ipr:
            tunnel = self._ensure_tunnel(ipr, address, mtu)
            self._ensure_decap(ipr, plan.hosts, local, tunnel)
            return self._ensure_routes(ipr, plan.routes, local, tunnel)

    # tunl0 -------------------------------------------------------------------

    @staticmethod
    def _ensure_tunnel(ipr, address: str, mtu: int) -> int:
        found = ipr.link_lookup(ifname=TUNNEL)
        if not found:
            try:      # the kernel's own ipip device, where it has IP-in-IP
                ipr.link("add", ifname=TUNNEL, kind="ipip")
            except NetlinkError:
                ipr.link("add", ifname=TUNNEL, kind="tuntap", mode="tun")
            found = ipr.link_lookup(ifname=TUNNEL)
        index = found[0]
        link = ipr.get_links(index)[0]
        if link.get_attr("IFLA_MTU") != mtu or not link["flags"] & 1:
            ipr.link("set", index=index, mtu=mtu, state="up")
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=index, family=socket.AF_INET)}
        for ip, prefixlen in have - {(address, 32)}:
            ipr.addr("del", index=index, address=ip, prefixlen=prefixlen)
        if address and (address, 32) not in have:
            ipr.addr("add", index=index, address=address, prefixlen=32)
        return index

    # Decapsulation -----------------------------------------------------------

    def _ensure_decap(self, ipr, hosts: set[str], local: str, tunnel: int) -> None:
        found = underlay.interface_of(local)
        if found is None:
            raise DataplaneError(f"No interface has this node's address {local}: IP-in-IP "
                                 "cannot be received.")
        index = found[1]
        if self._hosts is None:
            self._hosts = bpf.HashMap(4, 1, _MAX_HOSTS, "calico_hosts")
        want = {socket.inet_aton(ip) for ip in hosts}
        have = self._hosts.keys()
        for key in want - have:
            self._hosts.put(key, b"\x01")
        for key in have - want:
            self._hosts.delete(key)
        if self._decap == (index, local, tunnel) and self._attached(ipr, index):
            return
        program = programs.decapsulator(self._hosts, local, tunnel)
        try:
            try:
                ipr.tc("add", "clsact", index)
            except NetlinkError:
                pass                       # there already
            self._detach(ipr, index)
            ipr.tc("add-filter", "bpf", index, ":1", fd=program, name=FILTER_NAME,
                   parent=_INGRESS, classid=1, direct_action=True, prio=FILTER_PRIO)
        finally:
            os.close(program)              # the filter holds it now
        self._decap = (index, local, tunnel)
        log.info("IP-in-IP decapsulation on %s for %s", found[0], local)

    @staticmethod
    def _attached(ipr, index: int) -> bool:
        try:
            return any(f.get_nested("TCA_OPTIONS", "TCA_BPF_NAME") == FILTER_NAME
                       for f in ipr.get_filters(index, parent=_INGRESS_ID))
        except NetlinkError:
            return False

    @staticmethod
    def _detach(ipr, index: int) -> None:
        try:
            ipr.tc("del-filter", "bpf", index, ":1", parent=_INGRESS, prio=FILTER_PRIO)
        except NetlinkError:
            pass

    # Routes ------------------------------------------------------------------

    def _encapsulator(self, local: str, remote: str) -> int:
        if (local, remote) not in self._encaps:
            self._encaps[(local, remote)] = programs.encapsulator(local, remote)
        return self._encaps[(local, remote)]

    @staticmethod
    def _routes(ipr) -> dict[str, tuple[str, str]]:
        """Our routes: CIDR -> (gateway, program name)."""
        found = {}
        for r in ipr.get_routes(family=socket.AF_INET, proto=ROUTE_PROTOCOL):
            if r["proto"] != ROUTE_PROTOCOL:
                continue
            encap = r.get_attr("RTA_ENCAP")
            xmit = encap.get_attr("LWT_BPF_XMIT") if encap is not None else None
            name = xmit.get_attr("LWT_BPF_PROG_NAME") if xmit is not None else ""
            found[f"{r.get_attr('RTA_DST')}/{r['dst_len']}"] = (r.get_attr("RTA_GATEWAY"), name)
        return found

    def _ensure_routes(self, ipr, routes: dict[str, str], local: str, tunnel: int
                       ) -> dict[str, int]:
        have = self._routes(ipr)
        changed = removed = 0
        for cidr, host in sorted(routes.items()):
            name = encap_name(local, host)
            if have.get(cidr) == (host, name):
                continue
            try:
                ipr.route("replace", dst=cidr, gateway=host, oif=tunnel, flags=_ONLINK,
                          proto=ROUTE_PROTOCOL, encap={"type": "bpf", "xmit": {
                              "fd": self._encapsulator(local, host), "name": name}})
            except NetlinkError as exc:
                raise DataplaneError(f"Kernel refused the route {cidr} via {host} dev "
                                     f"{TUNNEL}: {os.strerror(exc.code)}.") from None
            changed += 1
        for cidr in sorted(set(have) - set(routes)):
            try:
                ipr.route("del", dst=cidr, proto=ROUTE_PROTOCOL)
            except NetlinkError:
                pass                        # gone meanwhile
            removed += 1
        # Programs no route uses any more.
        used = {(local, host) for host in routes.values()}
        for key in set(self._encaps) - used:
            os.close(self._encaps.pop(key))
        return {"routes": changed, "removed": removed}

    # Nothing encapsulates --------------------------------------------------------

    def teardown(self, local: str = "") -> bool:
        """Remove everything IP-in-IP (the decapsulator from the interface
        holding ``local`` too); says whether there was anything."""
        found = underlay.interface_of(local) if local else None
        with IPRoute() as ipr:
            had = bool(self._routes(ipr))
            for cidr in self._routes(ipr):
                try:
                    ipr.route("del", dst=cidr, proto=ROUTE_PROTOCOL)
                except NetlinkError:
                    pass
            for index in {self._decap[0] if self._decap else None,
                          found[1] if found else None} - {None}:
                self._detach(ipr, index)
            self._decap = None
            found = ipr.link_lookup(ifname=TUNNEL)
            if found:
                had = True
                kind = ipr.get_links(found[0])[0].get_nested("IFLA_LINKINFO",
                                                              "IFLA_INFO_KIND")
                if kind == "tun":
                    ipr.link("del", index=found[0])
                else:      # the kernel's fallback device cannot be deleted: empty it
                    for a in ipr.get_addr(index=found[0], family=socket.AF_INET):
                        ipr.addr("del", index=found[0], address=a.get_attr("IFA_ADDRESS"),
                                 prefixlen=a["prefixlen"])
                    ipr.link("set", index=found[0], state="down")
        for fd in self._encaps.values():
            os.close(fd)
        self._encaps.clear()
        if self._hosts is not None:
            self._hosts.close()
            self._hosts = None
        return had
