"""Builds the IPAM gRPC server around an Ipam."""

from __future__ import annotations

import grpc

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import rpc
from services.ipam.allocator import Ipam
from services.ipam.servicer import IpamServicer

SERVICE_NAME = ipam_pb2.DESCRIPTOR.services_by_name["IpamService"].full_name


def create_server(addr: str | list[str], ipam: Ipam, security=None, authorizer=None
                  ) -> tuple[grpc.Server, int]:
    servicer = IpamServicer(ipam)
    return rpc.create_server(
        addr, [lambda s: ipam_pb2_grpc.add_IpamServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME], security=security, authorizer=authorizer)
