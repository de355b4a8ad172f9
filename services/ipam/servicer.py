"""IpamService: translates between the proto contract and the Ipam domain."""

from __future__ import annotations

import time

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy.api.ipam import VERSIONS as _VERSIONS
from calicopy.api.ipam import ipip_mode_of
from calicopy.api.ipam import pool_to_msg as _pool_msg
from calicopy import metrics
from calicopy.rpc import maps_errors
from services.ipam.allocator import Ipam

#: An allocation starts no commit in the last COMMIT_MARGIN seconds (or last
#: fifth, if shorter) of its caller's deadline: a commit that started earlier
#: lands before the caller gives up and cleans up.
COMMIT_MARGIN = 0.5


def _flag(request, name):
    return getattr(request, name) if request.HasField(name) else None


def commit_deadline(context) -> float | None:
    """The monotonic time after which an allocation for this call must not
    start a commit; None when the caller set no deadline."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + remaining - min(COMMIT_MARGIN, remaining / 5)


def _count(family, ips) -> None:
    """Count addresses in a metrics family by IP version."""
    for ip in ips:
        family.inc(family="6" if ":" in ip else "4")


def _endpoint_use(use) -> ipam_pb2.EndpointUse:
    return ipam_pb2.EndpointUse(endpoint_id=use.endpoint_id, node=use.node,
                                orchestrator=use.orchestrator, workload_id=use.workload_id,
                                ips=list(use.ips))


class IpamServicer(ipam_pb2_grpc.IpamServiceServicer):

    def __init__(self, ipam: Ipam):
        self.ipam = ipam

    @maps_errors
    def CreatePool(self, request, context):
        p = request.pool
        pool = self.ipam.create_pool(p.cidr, p.block_size, nat_outgoing=p.nat_outgoing,
                                     ipip_mode=ipip_mode_of(p.ipip_mode, p.ipip),
                                     disabled=p.disabled)
        return ipam_pb2.CreatePoolResponse(pool=_pool_msg(pool))

    @maps_errors
    def UpdatePool(self, request, context):
        pool = self.ipam.update_pool(
            request.cidr, nat_outgoing=_flag(request, "nat_outgoing"),
            ipip_mode=ipip_mode_of(request.ipip_mode, _flag(request, "ipip")),
            disabled=_flag(request, "disabled"))
        return ipam_pb2.UpdatePoolResponse(pool=_pool_msg(pool))

    @maps_errors
    def DeletePool(self, request, context):
        # Who still used the pool, said before it goes (only a forced removal
        # gets this far with addresses allocated).
        users = self.ipam.endpoints_using(request.cidr) if request.force else []
        released = self.ipam.delete_pool(request.cidr, force=request.force)
        return ipam_pb2.DeletePoolResponse(released=released,
                                           endpoints=[_endpoint_use(u) for u in users])

    @maps_errors
    def ListPools(self, request, context):
        pools = self.ipam.list_pools(_VERSIONS.get(request.ip_version))
        return ipam_pb2.ListPoolsResponse(pools=[_pool_msg(p) for p in pools])

    @maps_errors
    def AutoAssign(self, request, context):
        v4, v6 = self.ipam.auto_assign(
            request.num_ipv4, request.num_ipv6, request.handle_id, request.hostname,
            dict(request.attributes), list(request.ipv4_pools), list(request.ipv6_pools),
            request_id=request.request_id, deadline=commit_deadline(context))
        _count(metrics.IPAM_ALLOCATIONS, list(v4) + list(v6))
        return ipam_pb2.AutoAssignResponse(ipv4=v4, ipv6=v6)

    @maps_errors
    def AssignIP(self, request, context):
        pool = self.ipam.assign_ip(request.ip, request.handle_id, request.hostname,
                                   dict(request.attributes), deadline=commit_deadline(context))
        _count(metrics.IPAM_ALLOCATIONS, [request.ip])
        return ipam_pb2.AssignIPResponse(pool=str(pool.cidr))

    @maps_errors
    def ReleaseIPs(self, request, context):
        released, missing = self.ipam.release_ips(list(request.ips), request.handle_id or None,
                                                  force=request.force)
        _count(metrics.IPAM_RELEASES, released)
        return ipam_pb2.ReleaseIPsResponse(released=released, not_assigned=missing)

    @maps_errors
    def ReleaseByHandle(self, request, context):
        released = self.ipam.release_by_handle(request.handle_id)
        _count(metrics.IPAM_RELEASES, released)
        return ipam_pb2.ReleaseByHandleResponse(released=released)

    @maps_errors
    def GetAllocation(self, request, context):
        return ipam_pb2.GetAllocationResponse(**self.ipam.get_allocation(request.ip))

    @maps_errors
    def ListHandleAllocations(self, request, context):
        return ipam_pb2.ListHandleAllocationsResponse(allocations=[
            ipam_pb2.Allocation(**a) for a in self.ipam.handle_allocations(request.handle_id)])

    @maps_errors
    def GetUsage(self, request, context):
        usage = self.ipam.usage(_VERSIONS.get(request.ip_version))
        return ipam_pb2.GetUsageResponse(
            pools=[ipam_pb2.PoolUsage(**{**p, "size": str(p["size"])}) for p in usage.pools],
            blocks=[ipam_pb2.BlockUsage(**b) for b in usage.blocks],
            hosts=[ipam_pb2.HostUsage(**h) for h in usage.hosts])

    @maps_errors
    def CheckConsistency(self, request, context):
        problems, nblocks, nhandles = self.ipam.check()
        return ipam_pb2.CheckConsistencyResponse(
            problems=[ipam_pb2.Problem(kind=p.kind, subject=p.subject, detail=p.detail)
                      for p in problems],
            blocks_checked=nblocks, handles_checked=nhandles)

    @maps_errors
    def ReleaseHost(self, request, context):
        done = self.ipam.release_host(request.hostname)
        _count(metrics.IPAM_RELEASES, done.released)
        return ipam_pb2.ReleaseHostResponse(released=done.released,
                                            blocks_freed=done.blocks_freed,
                                            blocks_unaffined=done.blocks_unaffined)
