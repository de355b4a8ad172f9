"""BGP's records: nodes, peers and the cluster's BGP settings.

A node record is written when a host starts (``calicoctl node``) and read by
every node's BIRD renderer; peers and settings are written through the BGP
service and read by the renderers too. The readers at the end are the one
way to turn those keys into values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from calicopy.datastore import keys
from calicopy.datastore.store import Store
from calicopy.errors import InvalidArgument


class BadInput(InvalidArgument):
    """A node name, address or AS number is malformed."""


DEFAULT_AS = 64511
MAX_AS = 4294967295
_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?\Z")


def parse_ip(text: str, version: int | None = None, what: str = "IP address"):
    try:
        ip = ipaddress.ip_address((text or "").strip())
    except ValueError:
        raise BadInput(f"{text} is not a valid {what}.") from None
    if version and ip.version != version:
        raise BadInput(f"{text} is not a valid IPv{version} address.")
    return ip


def check_as(num: int) -> int:
    if not 1 <= num <= MAX_AS:
        raise BadInput(f"Invalid AS number {num}: use 1-{MAX_AS}.")
    return num


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise BadInput(f"Invalid node name '{name}': use 1-253 letters, digits, '.', '-' "
                       "or '_'.")
    return name


@dataclasses.dataclass
class Node:
    name: str
    ipv4: str
    ipv6: str = ""
    as_num: int = 0          # 0: the cluster default

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Node":
        return cls(data["name"], data.get("ipv4", ""), data.get("ipv6", ""),
                   int(data.get("as_num") or 0))


@dataclasses.dataclass
class Peer:
    ip: str
    as_num: int = 0          # 0: the cluster default (iBGP)
    node: str = ""           # "" for a global peer
    route_reflector: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Peer":
        return cls(data["ip"], int(data.get("as_num") or 0), data.get("node", ""),
                   bool(data.get("route_reflector")))


@dataclasses.dataclass
class BgpConfig:
    default_as: int = DEFAULT_AS
    node_mesh: bool = True


# Readers ---------------------------------------------------------------------

def read_nodes(store: Store) -> list[Node]:
    return sorted((Node.from_json(kv.json()) for kv in store.list(keys.HOSTS)
                   if keys.is_node(kv.key)), key=lambda n: n.name)


def read_config(store: Store) -> BgpConfig:
    as_kv, mesh_kv = store.get(keys.BGP_AS), store.get(keys.BGP_NODE_MESH)
    return BgpConfig(int(as_kv.json()) if as_kv else DEFAULT_AS,
                     bool(mesh_kv.json().get("enabled", True)) if mesh_kv else True)


def read_peers(store: Store, node: str = "", version: int = 0) -> list[Peer]:
    """Global peers, or with ``node`` that node's own, sorted by address."""
    versions = [version] if version else [4, 6]
    found = [Peer.from_json(kv.json()) for v in versions
             for kv in store.list(keys.peers_prefix(v, node or None))]
    return sorted(found, key=lambda p: (ipaddress.ip_address(p.ip).version,
                                        ipaddress.ip_address(p.ip)))
