"""The gRPC contract: status codes, health and reflection, against real etcd."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from calico.ipam.v1 import ipam_pb2
from calicopy import rpc

Code = grpc.StatusCode


def status(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.fixture
def pool(ipam_client):
    return ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.30.0.1/24")).pool


def test_create_pool_normalises_and_resolves_block_size(pool):
    assert (pool.cidr, pool.block_size, pool.ip_version) == ("10.30.0.0/24", 26,
                                                            ipam_pb2.IP_VERSION_V4)


@pytest.mark.parametrize("request_kw,code,fragment", [
    (dict(num_ipv4=-1, handle_id="w", hostname="h"), Code.INVALID_ARGUMENT, "between 0 and 1024"),
    (dict(num_ipv4=100000, handle_id="w", hostname="h"), Code.INVALID_ARGUMENT, "between 0 and 1024"),
    (dict(num_ipv4=1, handle_id="", hostname="h"), Code.INVALID_ARGUMENT, "Invalid handle id"),
    (dict(num_ipv4=1, handle_id="w", hostname=""), Code.INVALID_ARGUMENT, "Invalid hostname"),
    (dict(num_ipv6=1, handle_id="w", hostname="h"), Code.FAILED_PRECONDITION, "No enabled IPv6 pool"),
    (dict(num_ipv4=1, handle_id="w", hostname="h", ipv4_pools=["10.99.0.0/24"]),
     Code.NOT_FOUND, "10.99.0.0/24 is not a configured pool"),
    (dict(num_ipv4=1, handle_id="w", hostname="h", ipv4_pools=["fd00::/64"]),
     Code.INVALID_ARGUMENT, "not an IPv4 pool"),
    (dict(num_ipv4=257, handle_id="w", hostname="h"), Code.RESOURCE_EXHAUSTED,
     "wanted 257, found 256"),
])
def test_auto_assign_errors_change_nothing(ipam_client, pool, request_kw, code, fragment):
    got_code, details = status(lambda: ipam_client.auto_assign(**request_kw))
    assert got_code == code and fragment in details
    assert ipam_client.get_usage().pools[0].allocated == 0
    assert not ipam_client.check_consistency().problems


def test_assign_ip_codes(ipam_client, pool):
    assert ipam_client.assign_ip(ip="10.30.0.9", handle_id="w", hostname="h").pool == pool.cidr
    assert status(lambda: ipam_client.assign_ip(ip="10.30.0.9", handle_id="x", hostname="h")) \
        == (Code.ALREADY_EXISTS, "IP address 10.30.0.9 is already assigned in pool 10.30.0.0/24.")
    assert status(lambda: ipam_client.assign_ip(ip="10.31.0.9", handle_id="x", hostname="h")) \
        == (Code.INVALID_ARGUMENT, "10.31.0.9 is not in any configured pool.")
    assert status(lambda: ipam_client.assign_ip(ip="nonsense", handle_id="x", hostname="h"))[0] \
        == Code.INVALID_ARGUMENT


def test_pool_codes(ipam_client, pool):
    create = ipam_client.create_pool
    assert status(lambda: create(pool=ipam_pb2.Pool(cidr="10.30.0.0/24")))[0] == Code.ALREADY_EXISTS
    assert status(lambda: create(pool=ipam_pb2.Pool(cidr="10.30.0.0/16")))[0] == Code.FAILED_PRECONDITION
    assert status(lambda: create(pool=ipam_pb2.Pool(cidr="10.30.0.0/33")))[0] == Code.INVALID_ARGUMENT
    assert status(lambda: ipam_client.delete_pool(cidr="10.40.0.0/24"))[0] == Code.NOT_FOUND
    assert status(lambda: ipam_client.update_pool(cidr="10.40.0.0/24", ipip=True))[0] == Code.NOT_FOUND
    ipam_client.auto_assign(num_ipv4=1, handle_id="w", hostname="h")
    assert status(lambda: ipam_client.delete_pool(cidr=pool.cidr))[0] == Code.FAILED_PRECONDITION
    assert ipam_client.update_pool(cidr=pool.cidr, disabled=True).pool.disabled
    assert status(lambda: ipam_client.auto_assign(num_ipv4=1, handle_id="w2", hostname="h"))[0] \
        == Code.FAILED_PRECONDITION


def test_release_is_idempotent(ipam_client, pool):
    ips = ipam_client.auto_assign(num_ipv4=2, handle_id="w", hostname="h").ipv4
    assert sorted(ipam_client.release_by_handle(handle_id="w").released) == sorted(ips)
    assert list(ipam_client.release_by_handle(handle_id="w").released) == []
    again = ipam_client.release_ips(ips=ips)
    assert list(again.released) == [] and sorted(again.not_assigned) == sorted(ips)


def test_health_and_reflection(ipam_addr):
    with rpc.channel(ipam_addr) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "calico.ipam.v1.IpamService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"calico.ipam.v1.IpamService", "grpc.health.v1.Health"} <= names


def test_ipip_mode_and_the_deprecated_flag(ipam_client, pool):
    assert (pool.ipip_mode, pool.ipip) == (ipam_pb2.IPIP_MODE_NEVER, False)
    old = ipam_client.update_pool(cidr=pool.cidr, ipip=True).pool       # the old flag: always
    assert (old.ipip_mode, old.ipip) == (ipam_pb2.IPIP_MODE_ALWAYS, True)
    cross = ipam_client.update_pool(cidr=pool.cidr,
                                    ipip_mode=ipam_pb2.IPIP_MODE_CROSS_SUBNET).pool
    assert (cross.ipip_mode, cross.ipip) == (ipam_pb2.IPIP_MODE_CROSS_SUBNET, True)
    assert ipam_client.update_pool(cidr=pool.cidr, disabled=False).pool.ipip_mode == \
        ipam_pb2.IPIP_MODE_CROSS_SUBNET                                 # unset: unchanged
    six = ipam_pb2.Pool(cidr="fd80::/64", ipip_mode=ipam_pb2.IPIP_MODE_ALWAYS)
    assert status(lambda: ipam_client.create_pool(pool=six)) == (
        Code.INVALID_ARGUMENT, "IP-in-IP is IPv4 only: an IPv6 pool cannot use it.")
    assert status(lambda: ipam_client.update_pool(cidr=pool.cidr, ipip_mode=9))[0] == \
        Code.INVALID_ARGUMENT
    assert ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.31.0.0/24", ipip=True)) \
        .pool.ipip_mode == ipam_pb2.IPIP_MODE_ALWAYS
