"""The IPAM service's messages <-> calicopy.model.ipam, and its client."""

from __future__ import annotations

import time

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy.errors import DeadlineExceeded
from calicopy.model.ipam import IPIP_ALWAYS, IPIP_CROSS_SUBNET, IPIP_NEVER, Pool
from calicopy.rpc import Client

VERSIONS = {ipam_pb2.IP_VERSION_V4: 4, ipam_pb2.IP_VERSION_V6: 6}
ENUMS = {4: ipam_pb2.IP_VERSION_V4, 6: ipam_pb2.IP_VERSION_V6}
IPIP_MODES = {IPIP_NEVER: ipam_pb2.IPIP_MODE_NEVER, IPIP_ALWAYS: ipam_pb2.IPIP_MODE_ALWAYS,
              IPIP_CROSS_SUBNET: ipam_pb2.IPIP_MODE_CROSS_SUBNET}
IPIP_MODE_NAMES = {v: k for k, v in IPIP_MODES.items()}


def ipip_mode_of(mode: int, ipip: bool | None) -> str | None:
    """The mode a message asks for: ipip_mode, else the deprecated ipip flag
    (None when neither is set)."""
    if mode != ipam_pb2.IPIP_MODE_UNSPECIFIED:
        return IPIP_MODE_NAMES.get(mode, f"unknown ({mode})")
    if ipip is None:
        return None
    return IPIP_ALWAYS if ipip else IPIP_NEVER


def pool_to_msg(pool: Pool) -> ipam_pb2.Pool:
    return ipam_pb2.Pool(cidr=str(pool.cidr), block_size=pool.block_size,
                         nat_outgoing=pool.nat_outgoing, ipip=pool.ipip,
                         ipip_mode=IPIP_MODES[pool.ipip_mode],
                         disabled=pool.disabled, ip_version=ENUMS[pool.version])


class IpamClient:
    """The IPAM service, with the same methods as its domain
    (services.ipam.allocator.Ipam): what the endpoint service calls. Failures
    come back as domain errors, so status codes pass through unchanged. An
    allocation's ``deadline`` (a time.monotonic() time, as the domain's) is
    its call's deadline when nearer than the client's timeout."""

    def __init__(self, target: str, timeout: float = 10.0, security=None,
                 wait_for_ready: bool = False):
        self._client = Client("IPAM service", target, ipam_pb2_grpc.IpamServiceStub, timeout,
                              security, wait_for_ready=wait_for_ready)

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, request, deadline: float | None = None):
        timeout = None
        if deadline is not None:
            timeout = min(self._client.timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlineExceeded(f"No time left to call the IPAM service ({method}): "
                                       "the caller's deadline is too near.")
        return self._client.call(method, request, timeout)

    def auto_assign(self, num_ipv4, num_ipv6, handle_id, host, attributes=None,
                    ipv4_pools=(), ipv6_pools=(), request_id="", deadline=None):
        resp = self._call("AutoAssign", ipam_pb2.AutoAssignRequest(
            num_ipv4=num_ipv4, num_ipv6=num_ipv6, handle_id=handle_id, hostname=host,
            attributes=attributes or {}, ipv4_pools=list(ipv4_pools),
            ipv6_pools=list(ipv6_pools), request_id=request_id), deadline)
        return list(resp.ipv4), list(resp.ipv6)

    def assign_ip(self, ip, handle_id, host, attributes=None, deadline=None):
        return self._call("AssignIP", ipam_pb2.AssignIPRequest(
            ip=ip, handle_id=handle_id, hostname=host, attributes=attributes or {}),
            deadline).pool

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
