"""The BGP service's messages <-> calicopy.model.bgp."""

from __future__ import annotations

from calico.bgp.v1 import bgp_pb2
from calicopy.model.bgp import BgpConfig, Node, Peer


def node_to_msg(node: Node) -> bgp_pb2.Node:
    return bgp_pb2.Node(name=node.name, ipv4=node.ipv4, ipv6=node.ipv6, as_num=node.as_num)


def node_from_msg(m: bgp_pb2.Node) -> Node:
    return Node(m.name, m.ipv4, m.ipv6, m.as_num)


def peer_to_msg(peer: Peer) -> bgp_pb2.Peer:
    return bgp_pb2.Peer(ip=peer.ip, as_num=peer.as_num, node=peer.node,
                        route_reflector=peer.route_reflector)


def peer_from_msg(m: bgp_pb2.Peer) -> Peer:
    return Peer(m.ip, m.as_num, m.node, m.route_reflector)


def config_to_msg(config: BgpConfig) -> bgp_pb2.BgpConfig:
    return bgp_pb2.BgpConfig(default_as=config.default_as, node_mesh=config.node_mesh)
