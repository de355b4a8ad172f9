"""Builds the BGP service's gRPC server around a BgpRegistry."""

from __future__ import annotations

import grpc

from calico.bgp.v1 import bgp_pb2, bgp_pb2_grpc
from calicopy import rpc
from services.bgp.registry import BgpRegistry
from services.bgp.servicer import BgpServicer

SERVICE_NAME = bgp_pb2.DESCRIPTOR.services_by_name["BgpService"].full_name


def create_server(addr: str | list[str], registry: BgpRegistry, security=None, authorizer=None
                  ) -> tuple[grpc.Server, int]:
    servicer = BgpServicer(registry)
    return rpc.create_server(
        addr, [lambda s: bgp_pb2_grpc.add_BgpServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME], security=security, authorizer=authorizer)
