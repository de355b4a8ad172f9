"""BgpService: translates between the proto contract and BgpRegistry."""

from __future__ import annotations

from calico.bgp.v1 import bgp_pb2, bgp_pb2_grpc
from calicopy.api.bgp import config_to_msg, node_from_msg, node_to_msg, peer_from_msg, peer_to_msg
from calicopy.api.endpoint import endpoint_to_msg
from calicopy.rpc import maps_errors
from services.bgp.registry import BgpRegistry


class BgpServicer(bgp_pb2_grpc.BgpServiceServicer):

    def __init__(self, registry: BgpRegistry):
        self.registry = registry

    @maps_errors
    def RegisterNode(self, request, context):
        node, changed = self.registry.register(node_from_msg(request.node))
        return bgp_pb2.RegisterNodeResponse(node=node_to_msg(node), changed=changed)

    @maps_errors
    def GetNode(self, request, context):
        return bgp_pb2.GetNodeResponse(node=node_to_msg(self.registry.get_node(request.name)))

    @maps_errors
    def ListNodes(self, request, context):
        infos = []
        for node in self.registry.list_nodes():
            eps = self.registry.endpoints(node.name)
            infos.append(bgp_pb2.NodeInfo(
                node=node_to_msg(node), endpoint_count=len(eps),
                endpoints=[endpoint_to_msg(e) for e in eps] if request.with_endpoints else []))
        return bgp_pb2.ListNodesResponse(nodes=infos)

    @maps_errors
    def DeleteNode(self, request, context):
        self.registry.delete_node(request.name, request.force)
        return bgp_pb2.DeleteNodeResponse()

    @maps_errors
    def GetBgpConfig(self, request, context):
        return bgp_pb2.GetBgpConfigResponse(config=config_to_msg(self.registry.config()))

    @maps_errors
    def SetBgpConfig(self, request, context):
        config = self.registry.set_config(
            request.default_as if request.HasField("default_as") else None,
            request.node_mesh if request.HasField("node_mesh") else None)
        return bgp_pb2.SetBgpConfigResponse(config=config_to_msg(config))

    @maps_errors
    def AddPeer(self, request, context):
        peer = self.registry.add_peer(peer_from_msg(request.peer))
        return bgp_pb2.AddPeerResponse(peer=peer_to_msg(peer))

    @maps_errors
    def RemovePeer(self, request, context):
        self.registry.remove_peer(request.ip, request.node, request.route_reflector)
        return bgp_pb2.RemovePeerResponse()

    @maps_errors
    def ListPeers(self, request, context):
        peers = self.registry.peers(request.node, request.ip_version)
        return bgp_pb2.ListPeersResponse(peers=[peer_to_msg(p) for p in peers])

    @maps_errors
    def GetNodeStatus(self, request, context):
        return bgp_pb2.GetNodeStatusResponse(nodes=[
            bgp_pb2.NodeStatus(node=r["node"], reported_at=r.get("reported_at", 0),
                               sessions=[bgp_pb2.Session(**s) for s in r.get("sessions", [])])
            for r in self.registry.status(request.node)])
