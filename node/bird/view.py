"""The records one node's BIRD configuration is made of, as the renderer
holds them: kept current one change at a time, decoded once per change.

``load(kvs)`` replaces everything (a full resync); ``apply(key, value)``
takes one change (``value`` None: the key was deleted). It holds every
node's record (the mesh peers with them), the BGP settings, the global peers
and this node's own, the pools, and the blocks this node owns: the block
records, not the affinities, say who owns a block (a stale affinity must
never make two hosts advertise the same block), so a block is this node's
while its record says so.

Records are read with the decoders the other readers use
(calicopy.model.bgp, calicopy.model.ipam); a malformed one is absent and
listed in ``bad`` (key -> what is wrong) until it is fixed or deleted.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

from calicopy.datastore import keys
from calicopy.datastore.store import KV
from calicopy.model import bgp, ipam
from calicopy.model.record import BadRecord, decode
from node.bird import conf


class BirdView:
    def __init__(self, name: str):
        self.name = name
        self._global = (keys.peers_prefix(4), keys.peers_prefix(6))
        self._own = (keys.peers_prefix(4, name), keys.peers_prefix(6, name))
        self._reset()

    def _reset(self) -> None:
        self.nodes: dict[str, bgp.Node] = {}           # key -> node
        self.settings: dict[str, object] = {}          # BGP_AS / BGP_NODE_MESH -> value
        self.global_peers: dict[str, bgp.Peer] = {}
        self.own_peers: dict[str, bgp.Peer] = {}
        self.pools: dict[str, ipam.Pool] = {}
        self.blocks: dict[str, str] = {}               # key -> CIDR, this node's only
        self.bad: dict[str, str] = {}

    def relevant(self, key: str) -> bool:
        """Whether a change of ``key`` can change this node's configuration."""
        return keys.is_node(key) or key in (keys.BGP_AS, keys.BGP_NODE_MESH) or \
            key.startswith(self._global + self._own) or \
            key.startswith((keys.pools_prefix(), keys.blocks_prefix()))

    def load(self, kvs) -> None:
        """Replace everything with the records ``kvs`` (a full read)."""
        self._reset()
        for kv in kvs:
            self.apply(kv.key, kv.value)

    def apply(self, key: str, value: str | None) -> bool:
        """One record written (``value``, JSON text) or deleted (None). Says
        whether what the view holds changed (an allocation in a block, for
        instance, changes nothing BIRD is configured from)."""
        if not self.relevant(key):
            return False
        kv = KV(key, value, 0) if value is not None else None
        was_bad = self.bad.pop(key, None)
        try:
            if keys.is_node(key):
                return self._put(self.nodes, key,
                                 decode(kv, bgp.Node.from_json) if kv else None) or was_bad is not None
            if key == keys.BGP_AS:
                return self._put(self.settings, key,
                                 decode(kv, bgp.as_from_json) if kv else None) or was_bad is not None
            if key == keys.BGP_NODE_MESH:
                return self._put(self.settings, key,
                                 decode(kv, bgp.mesh_from_json) if kv else None) or was_bad is not None
            if key.startswith(self._global):
                return self._put(self.global_peers, key,
                                 decode(kv, bgp.Peer.from_json) if kv else None) or was_bad is not None
            if key.startswith(self._own):
                return self._put(self.own_peers, key,
                                 decode(kv, bgp.Peer.from_json) if kv else None) or was_bad is not None
            if key.startswith(keys.pools_prefix()):
                return self._put(self.pools, key,
                                 decode(kv, ipam.Pool.from_json) if kv else None) or was_bad is not None
            block = decode(kv, ipam.Block.from_json) if kv else None
            return self._put(self.blocks, key, str(block.cidr) if block is not None and
                             block.host == self.name else None) or was_bad is not None
        except BadRecord as exc:        # absent, as far as BIRD goes
            for held in (self.nodes, self.settings, self.global_peers, self.own_peers,
                         self.pools, self.blocks):
                held.pop(key, None)
            self.bad[exc.key] = exc.why
            return True

    @staticmethod
    def _put(held: dict, key: str, value) -> bool:
        """Hold ``value`` under ``key`` (None: none); whether that changed anything."""
        before = held.get(key)
        if value is None:
            held.pop(key, None)
        else:
            held[key] = value
        return before != value

    def model(self, bad: dict[str, str],
              connected: Callable[[str], bool]) -> conf.BirdModel | None:
        """This node's BIRD model; None until it is registered (or while its
        own record is malformed). ``bad`` gets the malformed records that
        went into the answer (only the node's own while it is unregistered)."""
        own = keys.node(self.name)
        node = self.nodes.get(own)
        if node is None:
            if own in self.bad:
                bad[own] = self.bad[own]
            return None
        bad.update(self.bad)
        config = bgp.BgpConfig()
        if keys.BGP_AS in self.settings:
            config.default_as = self.settings[keys.BGP_AS]
        if keys.BGP_NODE_MESH in self.settings:
            config.node_mesh = self.settings[keys.BGP_NODE_MESH]
        pools = sorted(self.pools.values(), key=lambda p: (p.version, p.cidr))
        return conf.build_model(node, sorted(self.nodes.values(), key=lambda n: n.name), config,
                                _by_address(self.global_peers), _by_address(self.own_peers),
                                [str(p.cidr) for p in pools], list(self.blocks.values()),
                                connected)


def _by_address(peers: dict[str, bgp.Peer]) -> list[bgp.Peer]:
    """As calicopy.model.bgp.read_peers sorts them."""
    return sorted(peers.values(), key=lambda p: (ipaddress.ip_address(p.ip).version,
                                                 ipaddress.ip_address(p.ip)))
