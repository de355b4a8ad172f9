"""The BGP service's gRPC contract: status codes, health, reflection."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from calico.bgp.v1 import bgp_pb2, bgp_pb2_grpc
from calicopy import rpc

Code = grpc.StatusCode


@pytest.fixture
def bgp(bgp_server):
    with rpc.channel(bgp_server[0]) as ch:
        yield bgp_pb2_grpc.BgpServiceStub(ch)


def code(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_codes(bgp):
    node = bgp_pb2.Node(name="h1", ipv4="172.30.0.2")
    assert bgp.RegisterNode(bgp_pb2.RegisterNodeRequest(node=node), timeout=5).changed
    assert code(lambda: bgp.RegisterNode(bgp_pb2.RegisterNodeRequest(
        node=bgp_pb2.Node(name="h2", ipv4="banana")), timeout=5)) == Code.INVALID_ARGUMENT
    assert code(lambda: bgp.GetNode(bgp_pb2.GetNodeRequest(name="nope"), timeout=5)) == \
        Code.NOT_FOUND
    assert code(lambda: bgp.AddPeer(bgp_pb2.AddPeerRequest(
        peer=bgp_pb2.Peer(ip="172.30.0.2", as_num=1)), timeout=5)) == Code.INVALID_ARGUMENT
    assert code(lambda: bgp.RemovePeer(bgp_pb2.RemovePeerRequest(ip="10.0.0.1"), timeout=5)) \
        == Code.NOT_FOUND
    config = bgp.SetBgpConfig(bgp_pb2.SetBgpConfigRequest(node_mesh=False), timeout=5).config
    assert (config.default_as, config.node_mesh) == (64511, False)
    listed = bgp.ListNodes(bgp_pb2.ListNodesRequest(), timeout=5).nodes
    assert [n.node.name for n in listed] == ["h1"]
    assert bgp.GetNodeStatus(bgp_pb2.GetNodeStatusRequest(), timeout=5).nodes == []


def test_health(bgp_server):
    with rpc.channel(bgp_server[1]) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="calico.bgp.v1.BgpService"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
