"""Nodes, cluster BGP settings, peers and session reports, as stored in etcd.

Plain reads and conditional writes; no gRPC. Session reports are written by
each node's agent (with a lease, so a dead node's report disappears) and only
read here.
"""

from __future__ import annotations

import logging

from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store, Txn, retry
from calicopy.model.bgp import (BadInput, BgpConfig, Node, Peer, check_as, check_name, parse_ip,
                                read_config, read_nodes, read_peers)
from calicopy.model.endpoint import Endpoint
from calicopy.model.record import BadRecord, decode, decode_all
from calicopy.quarantine import Quarantine
from services.bgp.errors import NodeInUse, NodeNotFound, PeerNotFound

log = logging.getLogger("calico-bgp")


def _peer_or_none(kv: KV) -> Peer | None:
    try:
        return decode(kv, Peer.from_json)
    except BadRecord:
        return None


def _node_or_none(kv: KV) -> Node | None:
    try:
        return decode(kv, Node.from_json)
    except BadRecord:
        return None

_TXN_OPS = 100     # etcd caps the operations of one transaction (128 by default)


class BgpRegistry:
    def __init__(self, store: Store):
        self.store = store
        # Malformed records are skipped as if absent, and logged once.
        self.quarantine = Quarantine(log)

    # Nodes -------------------------------------------------------------------

    def register(self, node: Node) -> tuple[Node, bool]:
        check_name(node.name)
        node.ipv4 = str(parse_ip(node.ipv4, 4))
        node.ipv6 = str(parse_ip(node.ipv6, 6)) if node.ipv6 else ""
        if node.as_num:
            check_as(node.as_num)
        for other in self.list_nodes():
            if other.name != node.name and node.ipv4 == other.ipv4:
                raise BadInput(f"{node.ipv4} is already the address of node {other.name}.")

        def attempt():
            kv = self.store.get(keys.node(node.name))
            if kv is not None and _node_or_none(kv) == node:
                return node, False      # (a malformed record is replaced)
            txn = Txn().put(keys.node(node.name), kv, node.to_json())
            return (node, True) if self.store.commit(txn) else None
        return retry(f"registering node {node.name}", attempt)

    def get_node(self, name: str) -> Node:
        kv = self.store.get(keys.node(check_name(name)))
        if kv is None:
            raise NodeNotFound(name)
        return decode(kv, Node.from_json)      # BadRecord names the key

    def list_nodes(self) -> list[Node]:
        bad: dict[str, str] = {}
        nodes = read_nodes(self.store, bad)
        self.quarantine.update(keys.HOSTS, {k: v for k, v in bad.items() if keys.is_node(k)})
        return nodes

    def endpoints(self, name: str) -> list[Endpoint]:
        """The node's endpoints (a malformed record left out)."""
        prefix = keys.node_endpoints_prefix(name)
        bad: dict[str, str] = {}
        found = decode_all((kv for kv in self.store.list(prefix) if keys.is_endpoint(kv.key)),
                           Endpoint.from_json, bad)
        self.quarantine.update(prefix, bad)
        return found

    def delete_node(self, name: str, force: bool = False) -> None:
        if self.store.get(keys.node(check_name(name))) is None:
            raise NodeNotFound(name)    # (a malformed record can still be deleted)
        count = len(self.endpoints(name))
        if count and not force:
            raise NodeInUse(name, count)
        kvs = self.store.list(keys.host(name))
        for start in range(0, len(kvs), _TXN_OPS):
            txn = Txn()
            for kv in kvs[start:start + _TXN_OPS]:
                txn.delete(kv)
            self.store.commit(txn)   # a key changed meanwhile stays; reported below
        # A live node may report again meanwhile (status, progress): not a change.
        left = [kv.key for kv in self.store.list(keys.host(name)) if not keys.is_report(kv.key)]
        if left:
            raise BadInput(f"Node {name} changed while being deleted; run the command again.")

    # Settings ----------------------------------------------------------------

    def config(self) -> BgpConfig:
        bad: dict[str, str] = {}
        config = read_config(self.store, bad)
        for key, why in bad.items():
            self.quarantine.note(key, why)
        return config

    def set_config(self, default_as: int | None = None, node_mesh: bool | None = None
                   ) -> BgpConfig:
        if default_as is not None:
            check_as(default_as)
            self._set(keys.BGP_AS, default_as)
        if node_mesh is not None:
            self._set(keys.BGP_NODE_MESH, {"enabled": node_mesh})
        return self.config()

    def _set(self, key: str, value) -> None:
        def attempt():
            kv = self.store.get(key)
            return self.store.commit(Txn().put(key, kv, value)) or None
        retry(f"writing {key}", attempt)

    # Peers ---------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> Peer:
        ip = parse_ip(peer.ip)
        peer.ip = str(ip)
        if peer.as_num:
            check_as(peer.as_num)
        if peer.node:
            self.get_node(peer.node)
        if peer.route_reflector and peer.node:
            raise BadInput("Route reflectors are global peers; give no node.")
        for node in self.list_nodes():
            if peer.ip in (node.ipv4, node.ipv6) and (not peer.node or peer.node == node.name):
                raise BadInput(f"{peer.ip} is the address of node {node.name} itself.")
        key = keys.peer(ip, peer.node or None)

        def attempt():
            kv = self.store.get(key)
            return peer if self.store.commit(Txn().put(key, kv, peer.to_json())) else None
        return retry(f"adding peer {peer.ip}", attempt)

    def remove_peer(self, ip_text: str, node: str = "", route_reflector: bool = False) -> None:
        ip = parse_ip(ip_text)
        kv = self.store.get(keys.peer(ip, node or None))
        if kv is None or (_peer_or_none(kv) or Peer("")).route_reflector != route_reflector:
            kind = "route reflector" if route_reflector else "BGP peer"
            where = f" of node {node}" if node else ""
            raise PeerNotFound(f"{ip} is not a configured {kind}{where}.")
        if not self.store.commit(Txn().delete(kv)):
            raise PeerNotFound(f"{ip} changed while being removed; run the command again.")

    def peers(self, node: str = "", version: int = 0) -> list[Peer]:
        bad: dict[str, str] = {}
        found = read_peers(self.store, node, version, bad)
        for key, why in bad.items():
            self.quarantine.note(key, why)
        return found

    # Status --------------------------------------------------------------------

    def status(self, node: str = "") -> list[dict]:
        kvs: list[KV] = ([kv for kv in [self.store.get(keys.bgp_status(node))] if kv]
                         if node else [kv for kv in self.store.list(keys.HOSTS)
                                       if keys.is_bgp_status(kv.key)])
        reports = []
        for kv in kvs:
            try:
                report = kv.json()
            except ValueError:
                continue                # a node writing it badly: no report, as if absent
            if isinstance(report, dict):
                reports.append(report)
        return reports
