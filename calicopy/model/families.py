"""Which record family each etcd key holds, and the whole datastore checked.

The table below maps a key to its family's parser (each family's own
``from_json`` or check in calicopy.model.*), so that ``calicoctl check``
judges a record exactly as its readers do. Keys no reader interprets (node
status reports, the pools revision counter) are not checked.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from calicopy.datastore import keys
from calicopy.datastore.store import KV
from calicopy.model import bgp, ipam, policy
from calicopy.model.endpoint import Endpoint
from calicopy.model.record import BadRecord, RecordError, decode


def _named(name: str, parse: Callable[[Any], Any], attr: str) -> Callable[[Any], Any]:
    """``parse``, also requiring the record's ``attr`` to be the name its key says."""
    def checked(data):
        value = parse(data)
        if str(getattr(value, attr)) != name:
            raise RecordError(f"field '{attr}' holds {getattr(value, attr)!r}, but the key "
                              f"says {name!r}")
        return value
    return checked


def _rules(name: str) -> Callable[[Any], Any]:
    def parse(data):
        try:
            return policy.parse_rules(data, name)
        except policy.BadRule as exc:
            raise RecordError(str(exc)) from None
    return parse


def parser(key: str) -> Callable[[Any], Any] | None:
    """How the readers of ``key`` read it; None for keys no reader interprets."""
    if keys.is_endpoint(key):
        return Endpoint.from_json
    if keys.is_node(key):
        return _named(keys.parse_host(key), bgp.Node.from_json, "name")
    if key.startswith(keys.HOSTS) and key.endswith("/policy_applied"):
        return policy.applied_from_json
    if "/bgp_peer_v" in key and (key.startswith(keys.CONFIG) or key.startswith(keys.HOSTS)):
        return _named(keys.parse_peer(key)[1], bgp.Peer.from_json, "ip")
    if key == keys.BGP_AS:
        return bgp.as_from_json
    if key == keys.BGP_NODE_MESH:
        return bgp.mesh_from_json
    if key == keys.ENDPOINT_TO_HOST_ACTION:
        return policy.endpoint_to_host_from_json
    if key.startswith(keys.PROFILES):
        name, part = keys.parse_profile(key)
        return {"tags": policy.tags_from_json, "rules": _rules(name)}.get(part)
    if key.startswith(keys.pools_prefix()):
        return ipam.Pool.from_json
    if key.startswith(keys.blocks_prefix()):
        return ipam.Block.from_json
    if key.startswith(keys.HANDLES):
        return lambda data: ipam.Handle.from_json(keys.parse_handle(key), data)
    if key.startswith(keys.AFFINITIES):
        return ipam.affinity_from_json
    return None


def check(kvs: Iterable[KV]) -> list[tuple[str, str]]:
    """Every malformed record among ``kvs``: (key, what is wrong), in key order."""
    found = []
    for kv in sorted(kvs, key=lambda kv: kv.key):
        parse = parser(kv.key)
        if parse is None:
            continue
        try:
            decode(kv, parse)
        except BadRecord as exc:
            found.append((exc.key, exc.why))
    return found
