"""Builds the policy service's gRPC server around a PolicyRegistry."""

from __future__ import annotations

import grpc

from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import rpc
from services.policy.registry import PolicyRegistry
from services.policy.servicer import PolicyServicer

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name


def create_server(addr: str | list[str], registry: PolicyRegistry, security=None, authorizer=None
                  ) -> tuple[grpc.Server, int]:
    servicer = PolicyServicer(registry)
    return rpc.create_server(
        addr, [lambda s: policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME], security=security, authorizer=authorizer)
