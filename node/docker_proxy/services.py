"""The calico-py services as the proxy sees them: gRPC clients with the same
methods as the domain objects (EndpointManager, PolicyRegistry), failures
turned back into domain errors, every call with a deadline."""

from __future__ import annotations

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy.rpc import Client
from services.endpoint.endpoints import AddRequest
from services.endpoint.model import Endpoint


def endpoint_from_msg(m: endpoint_pb2.Endpoint) -> Endpoint:
    return Endpoint(m.endpoint_id, m.node, m.orchestrator, m.workload_id, m.interface_name,
                    m.netns, m.state, m.mac, list(m.ipv4_nets), list(m.ipv6_nets),
                    list(m.profile_ids), dict(m.labels), m.persistent)


class EndpointClient:
    def __init__(self, target: str, timeout: float):
        self._client = Client("endpoint service", target,
                              endpoint_pb2_grpc.EndpointServiceStub, timeout)

    def add(self, req: AddRequest) -> Endpoint:
        msg = endpoint_pb2.AddEndpointRequest(
            orchestrator=req.orchestrator, workload_id=req.workload_id,
            interface_name=req.interface_name, ips=req.ips, auto_ipv4=req.auto_ipv4,
            auto_ipv6=req.auto_ipv6, ipv4_pools=req.ipv4_pools, ipv6_pools=req.ipv6_pools,
            profile_ids=req.profile_ids, labels=req.labels, persistent=req.persistent)
        if req.pid:
            msg.pid = req.pid
        elif req.netns_path:
            msg.netns_path = req.netns_path
        return endpoint_from_msg(self._client.call("AddEndpoint", msg).endpoint)

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


class ProfileClient:
    def __init__(self, target: str, timeout: float):
        self._client = Client("policy service", target, policy_pb2_grpc.PolicyServiceStub,
                              timeout)

    def create(self, name: str) -> None:
        self._client.call("CreateProfile", policy_pb2.CreateProfileRequest(name=name))

    def close(self) -> None:
        self._client.close()
