"""Argument checks done before anything is sent, with the original tool's messages."""

from __future__ import annotations

import ipaddress

from cli.errors import CliError


def cidr(text: str) -> tuple[str, bool]:
    """A CIDR or bare address, normalised; also says whether host bits were cleared."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise CliError("Invalid CIDR specified.") from None
    return str(iface.network), iface.ip != iface.network.network_address


def ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise CliError("Invalid IP address specified.") from None
