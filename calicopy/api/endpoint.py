"""The endpoint service's messages <-> calicopy.model.endpoint, and its client."""

from __future__ import annotations

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calicopy.model.endpoint import AddRequest, Endpoint
from calicopy.rpc import Client


def endpoint_to_msg(ep: Endpoint) -> endpoint_pb2.Endpoint:
    return endpoint_pb2.Endpoint(
        endpoint_id=ep.endpoint_id, node=ep.node, orchestrator=ep.orchestrator,
        workload_id=ep.workload_id, interface_name=ep.interface_name,
        host_interface=ep.host_interface, mac=ep.mac, ipv4_nets=ep.ipv4_nets,
        ipv6_nets=ep.ipv6_nets, ipv4_gateway=ep.ipv4_gateway, ipv6_gateway=ep.ipv6_gateway,
        profile_ids=ep.profile_ids, labels=ep.labels, state=ep.state, netns=ep.netns,
        persistent=ep.persistent, mtu=ep.mtu)


def endpoint_from_msg(m: endpoint_pb2.Endpoint) -> Endpoint:
    return Endpoint(m.endpoint_id, m.node, m.orchestrator, m.workload_id, m.interface_name,
                    m.netns, m.state, m.mac, list(m.ipv4_nets), list(m.ipv6_nets),
                    list(m.profile_ids), dict(m.labels), persistent=m.persistent, mtu=m.mtu)


def add_request_to_msg(req: AddRequest) -> endpoint_pb2.AddEndpointRequest:
    msg = endpoint_pb2.AddEndpointRequest(
        orchestrator=req.orchestrator, workload_id=req.workload_id,
        interface_name=req.interface_name, ips=req.ips, auto_ipv4=req.auto_ipv4,
        auto_ipv6=req.auto_ipv6, ipv4_pools=req.ipv4_pools, ipv6_pools=req.ipv6_pools,
        profile_ids=req.profile_ids, labels=req.labels, peer_name=req.peer_name,
        ips_preassigned=req.ips_preassigned, persistent=req.persistent, mac=req.mac,
        mtu=req.mtu)
    if req.pid:
        msg.pid = req.pid
    elif req.netns_path:
        msg.netns_path = req.netns_path
    return msg


def add_request_from_msg(m: endpoint_pb2.AddEndpointRequest) -> AddRequest:
    return AddRequest(
        orchestrator=m.orchestrator, workload_id=m.workload_id, netns_path=m.netns_path,
        pid=m.pid, interface_name=m.interface_name, ips=list(m.ips), auto_ipv4=m.auto_ipv4,
        auto_ipv6=m.auto_ipv6, ipv4_pools=list(m.ipv4_pools), ipv6_pools=list(m.ipv6_pools),
        profile_ids=list(m.profile_ids), labels=dict(m.labels), peer_name=m.peer_name,
        ips_preassigned=m.ips_preassigned, persistent=m.persistent, mac=m.mac, mtu=m.mtu)


class EndpointClient:
    """One node's endpoint service, with the same methods as its domain
    (services.endpoint.endpoints.EndpointManager)."""

    def __init__(self, target: str, timeout: float, wait_for_ready: bool = False):
        self._client = Client("endpoint service", target, endpoint_pb2_grpc.EndpointServiceStub,
                              timeout, wait_for_ready=wait_for_ready)

    def node_info(self):
        """The node's facts (GetNodeInfo): also the cheapest call that shows
        the service answers."""
        return self._client.call("GetNodeInfo", endpoint_pb2.GetNodeInfoRequest())

    def add(self, req: AddRequest) -> Endpoint:
        return endpoint_from_msg(self._client.call("AddEndpoint",
                                                   add_request_to_msg(req)).endpoint)

    def remove(self, orchestrator: str, workload_id: str, interface: str = "") -> list[Endpoint]:
        resp = self._client.call("RemoveEndpoint", endpoint_pb2.RemoveEndpointRequest(
            orchestrator=orchestrator, workload_id=workload_id, interface_name=interface))
        return [endpoint_from_msg(m) for m in resp.removed]

    def list(self, orchestrator: str = "", workload_id: str = "") -> list[Endpoint]:
        resp = self._client.call("ListEndpoints", endpoint_pb2.ListEndpointsRequest(
            orchestrator=orchestrator, workload_id=workload_id))
        return [endpoint_from_msg(m) for m in resp.endpoints]

    def close(self) -> None:
        self._client.close()
