"""EndpointService: translates between the proto contract and EndpointManager."""

from __future__ import annotations

import contextlib
import time

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calicopy.api.endpoint import add_request_from_msg
from calicopy.api.endpoint import endpoint_to_msg as endpoint_msg
from calicopy import metrics
from calicopy.rpc import maps_errors
from services.endpoint.endpoints import EndpointManager


def caller_deadline(context) -> float | None:
    """The caller's deadline as a time.monotonic() time; None without one
    (the JSON gateway's callers, unless they send grpc-timeout)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


@contextlib.contextmanager
def _measured(count, seconds):
    """Count one add or remove by result (ok, or the error's class), and time
    it if it succeeded (over the gRPC or the JSON socket alike)."""
    start = time.monotonic()
    try:
        yield
    except Exception as exc:
        count.inc(result=type(exc).__name__)
        raise
    count.inc(result="ok")
    seconds.observe(time.monotonic() - start)


class EndpointServicer(endpoint_pb2_grpc.EndpointServiceServicer):

    def __init__(self, manager: EndpointManager):
        self.manager = manager

    @maps_errors
    def AddEndpoint(self, request, context):
        with _measured(metrics.ENDPOINT_ADDS, metrics.ENDPOINT_ADD_SECONDS):
            ep = self.manager.add(add_request_from_msg(request),
                                  deadline=caller_deadline(context))
        return endpoint_pb2.AddEndpointResponse(endpoint=endpoint_msg(ep))

    @maps_errors
    def RemoveEndpoint(self, request, context):
        with _measured(metrics.ENDPOINT_REMOVES, metrics.ENDPOINT_REMOVE_SECONDS):
            removed = self.manager.remove(request.orchestrator, request.workload_id,
                                          request.interface_name)
        return endpoint_pb2.RemoveEndpointResponse(removed=[endpoint_msg(e) for e in removed])

    @maps_errors
    def AddAddress(self, request, context):
        ep = self.manager.add_address(
            request.orchestrator, request.workload_id, request.interface_name, request.ip,
            request.auto_ipv4, request.auto_ipv6, list(request.ipv4_pools),
            list(request.ipv6_pools), deadline=caller_deadline(context))
        return endpoint_pb2.AddAddressResponse(endpoint=endpoint_msg(ep))

    @maps_errors
    def RemoveAddress(self, request, context):
        ep = self.manager.remove_address(request.orchestrator, request.workload_id,
                                         request.interface_name, request.ip)
        return endpoint_pb2.RemoveAddressResponse(endpoint=endpoint_msg(ep))

    @maps_errors
    def ListEndpoints(self, request, context):
        eps = self.manager.list(request.orchestrator, request.workload_id)
        return endpoint_pb2.ListEndpointsResponse(endpoints=[endpoint_msg(e) for e in eps])

    @maps_errors
    def GetEndpoint(self, request, context):
        return endpoint_pb2.GetEndpointResponse(
            endpoint=endpoint_msg(self.manager.get(request.endpoint_id)))

    @maps_errors
    def SetProfiles(self, request, context):
        ep = self.manager.set_profiles(request.endpoint_id, list(request.profile_ids))
        return endpoint_pb2.SetProfilesResponse(endpoint=endpoint_msg(ep))

    @maps_errors
    def GetNodeInfo(self, request, context):
        return endpoint_pb2.GetNodeInfoResponse(node=self.manager.node, ipv4=True,
                                                ipv6=self.manager.ipv6)
