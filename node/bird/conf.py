"""BIRD's configuration for one node, from a typed model.

``build_model`` decides (which peers, which routes, which filters); ``render``
only fills the template. Protocol names are derived from the peer's kind and
address (``Mesh_172_30_0_3``, ``RR6_fd99__250``), so a config that did not
change renders byte-for-byte the same and a reload is only done when needed.

A peer on a subnet this node is directly connected to is rendered ``direct``;
any other (a route reflector, a mesh peer or an upstream router one or more
routers away) ``multihop``, with its routes' next hops resolved recursively
through the node's own routes (which BIRD learns from the kernel for that,
pools excepted). Which is which the caller decides (``connected``), from the
node's routes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from string import Template
from typing import Callable

from calicopy.model.endpoint import ROUTE_PROTOCOL

TEMPLATE = Path(__file__).with_name("bird.conf.template")

MESH, ROUTE_REFLECTOR, GLOBAL, NODE = "node-to-node mesh", "route reflector", "global", \
    "node specific"
_KIND_PREFIX = {MESH: "Mesh", ROUTE_REFLECTOR: "RR", GLOBAL: "Global", NODE: "Node"}
_PREFIX_KIND = {v: k for k, v in _KIND_PREFIX.items()}


@dataclasses.dataclass(frozen=True)
class BgpPeer:
    ip: str
    as_num: int
    kind: str
    multihop: bool = False      # not on a directly connected subnet

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version

    @property
    def name(self) -> str:
        return protocol_name(self.kind, self.ip)


@dataclasses.dataclass
class BirdModel:
    node: str
    router_id: str
    local_as: int
    ipv4: str
    ipv6: str
    pools: list[str]                 # every pool CIDR
    blocks: list[str]                # this node's confirmed blocks
    peers: list[BgpPeer]


def protocol_name(kind: str, ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    six = "6" if addr.version == 6 else ""
    return f"{_KIND_PREFIX[kind]}{six}_{str(addr).replace('.', '_').replace(':', '_')}"


def parse_protocol_name(name: str) -> tuple[str, str, int] | None:
    """(kind, peer address, IP version) from a name made by protocol_name."""
    prefix, _, rest = name.partition("_")
    version = 6 if prefix.endswith("6") else 4
    kind = _PREFIX_KIND.get(prefix[:-1] if version == 6 else prefix)
    if kind is None or not rest:
        return None
    ip = rest.replace("_", ":" if version == 6 else ".")
    try:
        return kind, str(ipaddress.ip_address(ip)), version
    except ValueError:
        return None


def build_model(node, nodes, config, global_peers, node_peers, pools, blocks,
                connected: Callable[[str], bool] = lambda ip: True) -> BirdModel:
    """The BIRD model for ``node`` given the cluster state (plain values from
    calicopy.model.bgp and the IPAM records); ``connected(ip)`` says whether
    a peer's address is on a subnet the node is directly connected to."""
    local_as = node.as_num or config.default_as
    peers: list[BgpPeer] = []
    reflectors = [p for p in global_peers if p.route_reflector]
    if reflectors:
        peers += [BgpPeer(p.ip, p.as_num or config.default_as, ROUTE_REFLECTOR)
                  for p in reflectors]
    elif config.node_mesh:
        for other in nodes:
            if other.name == node.name:
                continue
            other_as = other.as_num or config.default_as
            peers += [BgpPeer(ip, other_as, MESH) for ip, mine in
                      ((other.ipv4, node.ipv4), (other.ipv6, node.ipv6)) if ip and mine]
    peers += [BgpPeer(p.ip, p.as_num or config.default_as, GLOBAL)
              for p in global_peers if not p.route_reflector]
    peers += [BgpPeer(p.ip, p.as_num or config.default_as, NODE) for p in node_peers]
    own = {node.ipv4, node.ipv6}
    usable = [p for p in peers if p.ip not in own and
              (node.ipv6 if p.version == 6 else node.ipv4)]
    unique = {p.name: dataclasses.replace(p, multihop=not connected(p.ip))
              for p in usable}                    # a later kind of the same address wins
    return BirdModel(node.name, node.ipv4, local_as, node.ipv4, node.ipv6,
                     sorted(pools, key=_net_key), sorted(blocks, key=_net_key),
                     sorted(unique.values(), key=lambda p: (p.version, _ip_key(p.ip), p.kind)))


def _net_key(cidr: str):
    net = ipaddress.ip_network(cidr)
    return net.version, net


def _ip_key(ip: str):
    return ipaddress.ip_address(ip)


def _prefix_set(cidrs: list[str]) -> str:
    return "[ " + ", ".join(f"{c}+" for c in cidrs) + " ]"


def _family(cidrs: list[str], version: int) -> list[str]:
    return [c for c in cidrs if ipaddress.ip_network(c).version == version]


def _import_filter(model: BirdModel, version: int) -> str:
    pools = _family(model.pools, version)
    if not pools:
        return "  reject;"
    return f"  if net ~ {_prefix_set(pools)} then accept;\n  reject;"


def _export_filter(model: BirdModel, version: int) -> str:
    pools, blocks = _family(model.pools, version), _family(model.blocks, version)
    if not pools:
        return "  reject;"
    lines = [f"  if net !~ {_prefix_set(pools)} then reject;",
             "  if source = RTS_STATIC then accept;"]
    if blocks:
        lines.append(f"  if net ~ {_prefix_set(blocks)} then reject;")
    lines += ["  # Addresses borrowed from other nodes' blocks, learned from the kernel.",
              "  if source = RTS_INHERIT then accept;", "  reject;"]
    return "\n".join(lines)


def _peer(model: BirdModel, peer: BgpPeer) -> str:
    v = peer.version
    source = model.ipv4 if v == 4 else model.ipv6
    where = "one or more routers away" if peer.multihop else "on a connected subnet"
    return (f"\n# {peer.kind} peer {peer.ip}, {where}\n"
            f"protocol bgp {peer.name} from calico_peer {{\n"
            f"  local {source} as {model.local_as};\n"
            f"  neighbor {peer.ip} as {peer.as_num};\n"
            f"  {'multihop' if peer.multihop else 'direct'};\n"
            f"  ipv{v} {{\n"
            f"    import filter calico_import{v};\n"
            f"    export filter calico_export{v};\n"
            f"    next hop self;\n"
            + ("    gateway recursive;\n" if peer.multihop else "") +
            "  };\n"
            "}\n")


def _kernel_import(model: BirdModel, version: int) -> str:
    """The endpoint service's routes, and the node's own routes outside the
    pools (so multi-hop peers' next hops resolve through them)."""
    pools = _family(model.pools, version)
    skip = f" if net ~ {_prefix_set(pools)} then reject;" if pools else ""
    return f"if krt_source = {ROUTE_PROTOCOL} then accept;{skip} accept;"


def render(model: BirdModel) -> str:
    def statics(version):
        routes = [f"  route {b} blackhole;" for b in model.blocks
                  if ipaddress.ip_network(b).version == version]
        return "\n".join(routes)
    return Template(TEMPLATE.read_text()).substitute(
        node=model.node, router_id=model.router_id, route_protocol=ROUTE_PROTOCOL,
        static_routes_v4=statics(4), static_routes_v6=statics(6),
        kernel_import_v4=_kernel_import(model, 4), kernel_import_v6=_kernel_import(model, 6),
        import_filter_v4=_import_filter(model, 4), import_filter_v6=_import_filter(model, 6),
        export_filter_v4=_export_filter(model, 4), export_filter_v6=_export_filter(model, 6),
        peers="".join(_peer(model, p) for p in model.peers))
