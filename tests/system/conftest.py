"""Fixtures of the system tests."""

import pytest

from calico.ipam.v1 import ipam_pb2
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import rpc

POOL4, POOL6 = "10.20.0.0/16", "fd80:24e2:f998:72d6::/64"


@pytest.fixture
def pools(ipam_client, policy_server):
    """An IPv4 and an IPv6 pool, and a profile "net" whose members reach each other."""
    with rpc.channel(policy_server[0]) as ch:
        policy_pb2_grpc.PolicyServiceStub(ch).CreateProfile(
            policy_pb2.CreateProfileRequest(name="net"), timeout=10)
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr=POOL4))
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr=POOL6))


@pytest.fixture
def hosts(lab, ipam_client):
    """Two hosts running the node, with an IPv4 and an IPv6 pool (no profile)."""
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr=POOL4))
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr=POOL6))
    return lab.add_host("h1", node=True), lab.add_host("h2", node=True)
