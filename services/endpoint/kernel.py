"""The kernel side of endpoints, over rtnetlink (services.endpoint.netlink),
behind a narrow interface.

``ensure`` takes the desired state of one workload interface and makes the
kernel match it: it reads what is there and changes only what differs, so it
is both "create" and "repair" and can be repeated safely. ``remove`` deletes
the veth pair, which takes its routes and neighbours with it.

What an interface looks like once ensured:

- host side ``cali<id>`` in this process's namespace, MAC ee:ee:ee:ee:ee:ee,
  proxy ARP on (it answers for 169.254.1.1), strict reverse-path filtering
  (``rp_filter`` 1: a packet whose source is not routed back through the
  interface is dropped; the kernel applies the larger of this and
  ``conf/all/rp_filter``, so an ``all`` of 2 makes it loose, which is logged;
  IPv6 has no such setting: the policy agent's raw table does it), IPv6 DAD
  off so its link-local address (the workloads' IPv6 gateway) is usable at
  once; a /32 or /128 route to each workload address (protocol
  ``ROUTE_PROTOCOL``) and a permanent neighbour entry for it;
- workload side, created directly inside the workload's namespace under its
  final name, up, with the addresses as /32 and /128 (IPv6 without DAD), a
  link route to 169.254.1.1 and a default route through it, and an IPv6
  default route through the host side's link-local address;
- both sides with the spec's MTU, when it gives one (0 leaves the kernel's
  default, 1500 for a new veth, and whatever is set later).

A detached endpoint (no namespace) is one whose orchestrator moves and
configures the workload side itself (Docker's network driver): the pair is
created with the workload side left in this namespace under ``peer_name``
(both sides with the MTU), and afterwards only the host side is kept right
(its MTU too), while it exists (when the workload's namespace goes, the pair
goes with it and the orchestrator removes the endpoint).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import socket
from contextlib import contextmanager

from calicopy import netns
from calicopy.model.endpoint import (HOST_MAC, INTERFACE_PREFIX, IPV4_GATEWAY, IPV6_GATEWAY,
                                     ROUTE_PROTOCOL)
from services.endpoint.errors import DataplaneError, InterfaceInUse
from services.endpoint.netlink import RT_SCOPE_LINK, NetlinkError, Rtnl

log = logging.getLogger(__name__)

IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80


@dataclasses.dataclass
class InterfaceSpec:
    """The desired state of one workload interface."""

    host_interface: str
    netns: str
    interface_name: str
    ips: list[str]
    mac: str = ""           # keep this workload-side MAC when (re)creating
    workload: str = ""      # for messages
    peer_name: str = ""     # detached (no netns): create the pair with this peer name
    mtu: int = 0            # of both sides; 0: the kernel's default, not enforced


def write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def _read_sysctl(path: str) -> str:
    try:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()
    except OSError:
        return ""


def enable_forwarding() -> None:
    """Host-wide settings every node needs (in this process's namespace)."""
    write_sysctl("net/ipv4/ip_forward", "1")
    if os.path.exists("/proc/sys/net/ipv6"):
        write_sysctl("net/ipv6/conf/all/forwarding", "1")


def ipv6_available() -> bool:
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
            return f.read().strip() == "0"
    except OSError:
        return False


def _family(ip) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def random_mac() -> str:
    """A random locally administered unicast MAC (so we need not read it back)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def _host_route(ip) -> str:
    return f"{ip}/{ip.max_prefixlen}"


@contextmanager
def _netlink(what: str):
    try:
        yield
    except NetlinkError as exc:
        raise DataplaneError(f"Kernel refused to {what}: {os.strerror(exc.code)}.") from None


class KernelDataplane:
    """Workload interfaces in the kernel. Safe to call from any thread: every
    call opens its own netlink sockets."""

    def __init__(self):
        self.ipv6 = ipv6_available()
        # Never a workload's: the namespace we run in and the machine's.
        self.host_namespaces = netns.host_namespaces()
        if _read_sysctl("net/ipv4/conf/all/rp_filter") == "2":
            log.warning("net.ipv4.conf.all.rp_filter is 2 (loose), which overrides the strict "
                        "reverse-path filter set on workload interfaces; policy still drops "
                        "spoofed source addresses")

    # Queries -----------------------------------------------------------------

    def check_workload(self, path: str, workload: str) -> None:
        netns.check(path, workload, self.host_namespaces)

    @staticmethod
    def workload_alive(path: str) -> bool:
        return netns.alive(path)

    @staticmethod
    def namespace_id(path: str) -> str:
        """Which namespace ``path`` is now ("" if none): a /proc/<pid> path
        names another namespace once the pid is reused."""
        try:
            st = os.stat(path)
        except OSError:
            return ""
        return f"{st.st_dev}:{st.st_ino}"

    def host_interfaces(self) -> set[str]:
        with Rtnl() as host:
            return {link.name for link in host.links()
                    if link.name.startswith(INTERFACE_PREFIX)}

    def workload_has_interface(self, path: str, name: str) -> bool:
        with Rtnl(netns.netlink_socket(path)) as wl:
            return wl.link_by_name(name) is not None

    # Changes -----------------------------------------------------------------

    def remove(self, host_interface: str) -> None:
        with Rtnl() as host, _netlink(f"delete {host_interface}"):
            link = host.link_by_name(host_interface)
            if link is None:
                return
            try:
                host.del_link(link.index)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:   # gone meanwhile: fine
                    raise

    def ensure(self, spec: InterfaceSpec) -> str:
        """Make the kernel match ``spec``; returns the workload-side MAC."""
        ips = [ipaddress.ip_address(ip) for ip in spec.ips]
        if not spec.netns:
            return self._ensure_detached(spec, ips)
        with Rtnl(strict=True) as host, Rtnl(netns.netlink_socket(spec.netns)) as wl:
            host_index, wl_index, mac, fresh = self._ensure_veth(host, wl, spec)
            with _netlink(f"configure {spec.interface_name} in {spec.workload}"):
                wl.set_link(wl_index, up=True)
                self._ensure_workload_addresses(wl, wl_index, ips, fresh)
                self._ensure_workload_routes(wl, wl_index, ips, fresh)
            with _netlink(f"route to {spec.workload} through {spec.host_interface}"):
                self._ensure_host_routes(host, host_index, ips, mac, fresh)
            return mac

    def _ensure_detached(self, spec: InterfaceSpec, ips) -> str:
        with Rtnl(strict=True) as host:
            link = host.link_by_name(spec.host_interface)
            fresh = link is None
            if fresh and not spec.peer_name:
                return spec.mac     # the workload is gone; nothing to keep right
            mac = spec.mac or random_mac()
            if fresh:
                with _netlink(f"create {spec.host_interface} for {spec.workload}"):
                    host.add_veth(spec.host_interface, HOST_MAC, spec.peer_name, mac, spec.mtu)
                link = host.link_by_name(spec.host_interface)
            elif spec.mtu:
                self._ensure_mtu(host, link, spec.host_interface, spec.mtu)
            self._host_side_settings(host, spec.host_interface, link.index)
            with _netlink(f"route to {spec.workload} through {spec.host_interface}"):
                self._ensure_host_routes(host, link.index, ips, mac, fresh)
            return mac

    def _ensure_veth(self, host: Rtnl, wl: Rtnl, spec: InterfaceSpec
                     ) -> tuple[int, int, str, bool]:
        """The pair's indexes, the workload side's MAC, and whether it is new
        (a new pair has no addresses or routes yet: nothing to read back)."""
        host_link = host.link_by_name(spec.host_interface)
        wl_link = wl.link_by_name(spec.interface_name)
        if host_link is not None and wl_link is not None \
                and host_link.peer_index == wl_link.index:
            if spec.mtu:
                self._ensure_mtu(host, host_link, spec.host_interface, spec.mtu)
                self._ensure_mtu(wl, wl_link, f"{spec.interface_name} in {spec.workload}",
                                 spec.mtu)
            self._host_side_settings(host, spec.host_interface, host_link.index)
            return host_link.index, wl_link.index, wl_link.mac, False
        if host_link is not None:
            # Our host side exists but its peer is not (or no longer) that
            # interface in the workload: start again.
            self.remove(spec.host_interface)
        if wl_link is not None:
            raise InterfaceInUse(spec.interface_name, spec.workload)
        mac = spec.mac or random_mac()
        fd = netns.open_namespace(spec.netns, spec.workload, self.host_namespaces)
        try:
            with _netlink(f"create {spec.host_interface} for {spec.workload}"):
                host.add_veth(spec.host_interface, HOST_MAC, spec.interface_name, mac, spec.mtu,
                              peer_netns_fd=fd)
        finally:
            os.close(fd)
        host_index = host.link_by_name(spec.host_interface).index
        self._host_side_settings(host, spec.host_interface, host_index)
        return host_index, wl.link_by_name(spec.interface_name).index, mac, True

    @staticmethod
    def _ensure_mtu(rtnl: Rtnl, link, name: str, mtu: int) -> None:
        """Set ``mtu`` on a link that has another (someone changed it)."""
        if link.mtu != mtu:
            with _netlink(f"set the MTU of {name} to {mtu}"):
                rtnl.set_link(link.index, mtu=mtu)

    def _host_side_settings(self, host: Rtnl, name: str, index: int) -> None:
        write_sysctl(f"net/ipv4/conf/{name}/proxy_arp", "1")
        write_sysctl(f"net/ipv4/conf/{name}/rp_filter", "1")
        write_sysctl(f"net/ipv4/neigh/{name}/proxy_delay", "0")
        if self.ipv6:
            # Before the link comes up, so its link-local address skips DAD.
            write_sysctl(f"net/ipv6/conf/{name}/accept_dad", "0")
            write_sysctl(f"net/ipv6/conf/{name}/proxy_ndp", "1")
        with _netlink(f"bring up {name}"):
            host.set_link(index, up=True)

    @staticmethod
    def _ensure_workload_addresses(wl: Rtnl, index: int, ips, fresh: bool) -> None:
        have = set()
        for found in () if fresh else wl.addresses(index):
            addr = ipaddress.ip_address(found.address)
            if not addr.is_link_local:
                have.add((addr, found.prefixlen))
        want = {(ip, ip.max_prefixlen) for ip in ips}
        for ip, prefixlen in have - want:
            wl.del_address(index, ip, prefixlen)
        for ip, prefixlen in sorted(want - have, key=lambda a: (a[0].version, a[0])):
            wl.add_address(index, ip, prefixlen, IFA_F_NODAD if ip.version == 6 else 0)

    @staticmethod
    def _ensure_workload_routes(wl: Rtnl, index: int, ips, fresh: bool) -> None:
        have = set() if fresh else {r.dst for family in (socket.AF_INET, socket.AF_INET6)
                                    for r in wl.routes(family, index)}
        if any(ip.version == 4 for ip in ips):
            wl.replace_route(f"{IPV4_GATEWAY}/32", index, scope=RT_SCOPE_LINK)
            wl.replace_route("0.0.0.0/0", index, gateway=IPV4_GATEWAY)
        else:
            for dst in ("0.0.0.0/0", f"{IPV4_GATEWAY}/32"):
                if dst in have:
                    wl.del_route(dst, index)
        if any(ip.version == 6 for ip in ips):
            wl.replace_route("::/0", index, gateway=IPV6_GATEWAY)
        elif "::/0" in have:
            wl.del_route("::/0", index)

    @staticmethod
    def _ensure_host_routes(host: Rtnl, index: int, ips, mac: str, fresh: bool) -> None:
        have = set() if fresh else {
            ipaddress.ip_interface(r.dst).ip
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in host.routes(family, index) if r.proto == ROUTE_PROTOCOL}
        for ip in have - set(ips):
            host.del_route(_host_route(ip), index, proto=ROUTE_PROTOCOL)
            if str(ip) in host.neighbours(_family(ip), index):
                host.del_neighbour(index, ip)
        for ip in ips:
            # IPv4: scope link, the workload is directly on the veth.
            host.replace_route(_host_route(ip), index, proto=ROUTE_PROTOCOL,
                               scope=RT_SCOPE_LINK if ip.version == 4 else 0)
            host.replace_neighbour(index, ip, mac, NUD_PERMANENT)
