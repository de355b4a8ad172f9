"""The IPAM service as seen by the endpoint service: a gRPC client with the
same methods as the IPAM domain, every call with a deadline, failures turned
back into domain errors (so their status codes pass through unchanged)."""

from __future__ import annotations

import grpc

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy.rpc import error_from_rpc


class IpamClient:
    def __init__(self, target: str, timeout: float = 10.0):
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target)
        self._stub = ipam_pb2_grpc.IpamServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request):
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"IPAM service at {self.target}") from None

    def auto_assign(self, num_ipv4, num_ipv6, handle_id, host, attributes=None,
                    ipv4_pools=(), ipv6_pools=()):
        resp = self._call("AutoAssign", ipam_pb2.AutoAssignRequest(
            num_ipv4=num_ipv4, num_ipv6=num_ipv6, handle_id=handle_id, hostname=host,
            attributes=attributes or {}, ipv4_pools=list(ipv4_pools),
            ipv6_pools=list(ipv6_pools)))
        return list(resp.ipv4), list(resp.ipv6)

    def assign_ip(self, ip, handle_id, host, attributes=None):
        return self._call("AssignIP", ipam_pb2.AssignIPRequest(
            ip=ip, handle_id=handle_id, hostname=host, attributes=attributes or {})).pool

    def release_ips(self, ips, handle_id=None):
        resp = self._call("ReleaseIPs", ipam_pb2.ReleaseIPsRequest(
            ips=list(ips), handle_id=handle_id or ""))
        return list(resp.released), list(resp.not_assigned)

    def release_by_handle(self, handle_id):
        return list(self._call("ReleaseByHandle", ipam_pb2.ReleaseByHandleRequest(
            handle_id=handle_id)).released)

    def handle_allocations(self, handle_id):
        resp = self._call("ListHandleAllocations",
                          ipam_pb2.ListHandleAllocationsRequest(handle_id=handle_id))
        return [{"ip": a.ip, "host": a.host, "attributes": dict(a.attributes)}
                for a in resp.allocations]

    def get_allocation(self, ip):
        resp = self._call("GetAllocation", ipam_pb2.GetAllocationRequest(ip=ip))
        return {"pool": resp.pool, "allocated": resp.allocated, "handle_id": resp.handle_id,
                "attributes": dict(resp.attributes)}
