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
from calicopy.model.record import BadRecord, RecordError, address, decode, decode_all, field


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
class BgpConfig:
    default_as: int = DEFAULT_AS
    node_mesh: bool = True


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
        """The record as stored; RecordError says what is wrong with a malformed one."""
        name = field(data, "name", str)
        if not _NAME_RE.match(name):
            raise RecordError(f"field 'name' holds {name!r}, not a node name")
        return cls(name, address(field(data, "ipv4", str), "ipv4", 4),
                   address(field(data, "ipv6", str, ""), "ipv6", 6, optional=True),
                   _as_field(data))


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
        """The record as stored; RecordError says what is wrong with a malformed one."""
        return cls(address(field(data, "ip", str), "ip"), _as_field(data),
                   field(data, "node", str, ""), field(data, "route_reflector", bool, False))


def _as_field(data: dict) -> int:
    as_num = field(data, "as_num", int, 0)
    if not 0 <= as_num <= MAX_AS:
        raise RecordError(f"field 'as_num' holds {as_num}, not an AS number (1-{MAX_AS})")
    return as_num


def as_from_json(data) -> int:
    """The cluster's default AS number record."""
    if not isinstance(data, int) or isinstance(data, bool) or not 1 <= data <= MAX_AS:
        raise RecordError(f"{data!r} is not an AS number (1-{MAX_AS})")
    return data


def mesh_from_json(data) -> bool:
    """The node-to-node mesh record: {"enabled": bool}."""
    return field(data, "enabled", bool, True)


# Readers ---------------------------------------------------------------------
#
# Each leaves out a malformed record, recording it in ``bad`` (key -> what is
# wrong) when given: a bad record of one node or peer must not stop the rest.

def read_nodes(store: Store, bad: dict[str, str] | None = None) -> list[Node]:
    found = decode_all((kv for kv in store.list(keys.HOSTS) if keys.is_node(kv.key)),
                       Node.from_json, bad)
    return sorted(found, key=lambda n: n.name)


def read_config(store: Store, bad: dict[str, str] | None = None) -> BgpConfig:
    """The settings; a malformed one reads as its default."""
    config = BgpConfig()
    for key, parse, attr in ((keys.BGP_AS, as_from_json, "default_as"),
                             (keys.BGP_NODE_MESH, mesh_from_json, "node_mesh")):
        kv = store.get(key)
        try:
            if kv is not None:
                setattr(config, attr, decode(kv, parse))
        except BadRecord as exc:
            if bad is not None:
                bad[exc.key] = exc.why
    return config


def read_peers(store: Store, node: str = "", version: int = 0,
               bad: dict[str, str] | None = None) -> list[Peer]:
    """Global peers, or with ``node`` that node's own, sorted by address."""
    versions = [version] if version else [4, 6]
    found = [p for v in versions
             for p in decode_all(store.list(keys.peers_prefix(v, node or None)),
                                 Peer.from_json, bad)]
    return sorted(found, key=lambda p: (ipaddress.ip_address(p.ip).version,
                                        ipaddress.ip_address(p.ip)))
