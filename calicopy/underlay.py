"""What a host knows of its underlay from its own kernel: whether an address
is on a subnet it is directly connected to, and which interface (and MTU)
carries its own address.

Read fresh on every call (routes change under us); every call opens its own
netlink socket, so any thread may call (or uses the caller's). Used by the BIRD renderer (direct or
multi-hop peers), the IP-in-IP routes (cross-subnet mode) and the endpoint
service (the workloads' default MTU).
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

DEFAULT_MTU = 1500


def on_link(ip: str, ipr: IPRoute | None = None) -> bool:
    """Whether the host reaches ``ip`` directly (the route to it has no
    gateway): it is on a subnet the host is connected to. An address the host
    has no route to is not. ``ipr``: a socket to ask on (the caller's, for
    many questions in a row), else one of its own."""
    addr = ipaddress.ip_address(ip)
    family = 2 if addr.version == 4 else 10
    try:
        if ipr is not None:
            routes = ipr.route("get", dst=str(addr), family=family)
        else:
            with IPRoute() as own:
                routes = own.route("get", dst=str(addr), family=family)
    except NetlinkError:
        return False
    return bool(routes) and routes[0].get_attr("RTA_GATEWAY") is None and \
        routes[0].get_attr("RTA_VIA") is None


def interface_of(ip: str) -> tuple[str, int, int] | None:
    """(name, index, MTU) of the interface holding the address ``ip``; None
    when no interface has it."""
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            if msg.get_attr("IFA_ADDRESS") == str(ipaddress.ip_address(ip)):
                link = ipr.get_links(msg["index"])[0]
                return link.get_attr("IFLA_IFNAME"), msg["index"], link.get_attr("IFLA_MTU")
    return None


def mtu_of(ip: str) -> int:
    """The MTU of the interface holding ``ip`` (the underlay's), else 1500."""
    found = interface_of(ip) if ip else None
    return found[2] if found else DEFAULT_MTU
