"""services.endpoint.netlink against the kernel, read-only (no privilege
needed): dumps end at NLMSG_DONE, a get answers one message, a refusal is
NetlinkError with the kernel's errno, and attributes decode."""

from __future__ import annotations

import errno
import socket

import pytest

from services.endpoint import netlink
from services.endpoint.netlink import NetlinkError, Rtnl


def test_a_link_dump_and_a_lookup_agree_on_loopback():
    with Rtnl(strict=True) as rtnl:
        links = {link.name: link for link in rtnl.links()}
        lo = rtnl.link_by_name("lo")
    assert links["lo"] == lo
    assert lo.index == socket.if_nametoindex("lo") and lo.mtu > 0 and lo.up


def test_a_link_that_is_not_there_is_none():
    with Rtnl() as rtnl:
        assert rtnl.link_by_name("calinothere0") is None
        assert rtnl.link_by_name("lo") is not None      # the socket still answers


def test_a_refusal_carries_the_kernels_errno():
    with Rtnl() as rtnl, pytest.raises(NetlinkError) as caught:
        rtnl.del_link(0x7FFFFFF0)            # no such link (or no permission)
    assert caught.value.code in (errno.ENODEV, errno.EPERM)
    assert "delete link" in str(caught.value)


def test_attributes_round_trip_with_padding():
    packed = netlink._attr(netlink.IFLA_IFNAME, b"eth0\0") + \
        netlink._attr(netlink.IFLA_MTU, netlink._U32.pack(1400))
    assert len(packed) % 4 == 0
    found = netlink._attrs(packed, 0, len(packed))
    assert found[netlink.IFLA_IFNAME] == b"eth0\0"
    assert netlink._U32.unpack(found[netlink.IFLA_MTU])[0] == 1400
