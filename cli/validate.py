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


def peer_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise CliError(f"{text} is not a valid IP address.") from None


def ip_of_version(text: str, version: int, message: str) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise CliError(message) from None
    if ip.version != version:
        raise CliError(message)
    return str(ip)


def as_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 4294967295:
        raise CliError("Invalid AS Number specified.")
    return int(text)


def root() -> None:
    import os
    if os.geteuid() != 0:
        raise CliError("This command must be run as root.", exit_code=2)
