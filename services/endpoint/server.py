"""Builds the endpoint service's gRPC server around an EndpointManager."""

from __future__ import annotations

import grpc

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calicopy import rpc
from services.endpoint.endpoints import EndpointManager
from services.endpoint.servicer import EndpointServicer

SERVICE_NAME = endpoint_pb2.DESCRIPTOR.services_by_name["EndpointService"].full_name


def create_server(addr: str | list[str], manager: EndpointManager, security=None, authorizer=None
                  ) -> tuple[grpc.Server, int]:
    servicer = EndpointServicer(manager)
    return rpc.create_server(
        addr, [lambda s: endpoint_pb2_grpc.add_EndpointServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME], security=security, authorizer=authorizer)
