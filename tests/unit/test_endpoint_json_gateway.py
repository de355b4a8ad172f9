"""The endpoint service's JSON socket: a real gateway on a unix socket, over
an EndpointManager with an in-memory store, the real IPAM domain and a fake
kernel; checked with raw HTTP, with the CNI plugin's client, and against the
gRPC server on the same manager."""

import http.client
import json
import os
import socket
import stat

import grpc
import pytest
from google.protobuf import json_format

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calicopy import errors
from calicopy.config import endpoint_json_socket
from calicopy.rpc import status_for
from calicopy import rpc
from cni.config import Services
from cni.rpc import Endpoint, EndpointClient, RpcFailure
from services.endpoint.endpoints import EndpointManager
from services.endpoint import json_gateway, local_socket
from services.endpoint.json_gateway import PATH_PREFIX, JsonGateway
from services.endpoint.server import create_server
from services.ipam.allocator import Ipam
from tests.fakes import FakeDataplane, MemoryStore

NS = "/var/run/netns/wl1"
ADD = {"orchestrator": "cni", "workload_id": "wl1", "netns_path": NS, "auto_ipv4": 1}


class Dataplane(FakeDataplane):
    """Fails ``ensure`` with ``error`` when it is set."""

    error: Exception | None = None

    def ensure(self, spec):
        if self.error is not None:
            raise self.error
        return super().ensure(spec)


@pytest.fixture(autouse=True)
def caller_is_root(monkeypatch):
    """The test process is the socket's caller: it counts as root whoever runs
    the unit tier (make test-unit runs without root); the refusal tests
    present another uid themselves."""
    monkeypatch.setattr(json_gateway, "peer_uid", lambda conn: 0)


@pytest.fixture
def world(tmp_path):
    store = MemoryStore()
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/24")
    dataplane = Dataplane()
    dataplane.namespaces[NS] = {"lo"}
    manager = EndpointManager(store, ipam, dataplane, "node-1")
    grpc_addr = f"unix:{tmp_path}/endpoint.sock"
    gateway = JsonGateway(endpoint_json_socket(grpc_addr), manager)
    gateway.start()
    try:
        yield manager, dataplane, gateway, grpc_addr
    finally:
        gateway.stop(grace=1)


def post(path: str, method: str, body: bytes | str, headers=None, verb="POST"):
    """One raw HTTP/1.1 exchange on the unix socket: (status, decoded JSON)."""
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(path)
    try:
        conn.request(verb, f"{PATH_PREFIX}{method}", body,
                     {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def client(gateway, timeout=10.0) -> EndpointClient:
    return EndpointClient(Services("node-1", "unix:/unused", "", "", timeout, gateway.path))


def test_socket_is_named_after_the_grpc_one(world):
    _, _, gateway, grpc_addr = world
    assert gateway.path == grpc_addr[len("unix:"):].replace("endpoint.sock", "endpoint.json.sock")


def test_good_request_gets_the_response_message_as_json(world):
    manager, dataplane, gateway, _ = world
    status, answer = post(gateway.path, "AddEndpoint", json.dumps(
        dict(ADD, labels={"cni.network": "net"}, profile_ids=["web"], mtu=1400)))
    assert status == 200
    ep = answer["endpoint"]
    (record,) = manager.list()
    assert ep["endpoint_id"] == record.endpoint_id and ep["ipv4_nets"] == record.ipv4_nets
    assert (ep["labels"], ep["profile_ids"], ep["mtu"], ep["state"]) == \
        ({"cni.network": "net"}, ["web"], 1400, "active")
    assert "ipv6_nets" not in ep and "persistent" not in ep    # defaults are left out
    assert dataplane.interfaces[record.host_interface]["mtu"] == 1400
    # lowerCamelCase names are the mapping's too; an empty body is the empty message.
    status, answer = post(gateway.path, "ListEndpoints", '{"workloadId": "wl1", '
                          '"orchestrator": "cni"}')
    assert status == 200 and [e["workload_id"] for e in answer["endpoints"]] == ["wl1"]
    assert post(gateway.path, "GetNodeInfo", "") == (200, {"node": "node-1", "ipv4": True,
                                                           "ipv6": True})


def test_same_answers_as_the_grpc_server(world):
    manager, _, gateway, grpc_addr = world
    server, _ = create_server(grpc_addr, manager)
    server.start()
    try:
        with rpc.channel(grpc_addr) as channel:
            stub = endpoint_pb2_grpc.EndpointServiceStub(channel)
            added = stub.AddEndpoint(json_format.ParseDict(ADD, endpoint_pb2.AddEndpointRequest()),
                                     timeout=10)
            status, answer = post(gateway.path, "GetEndpoint", json.dumps(
                {"endpoint_id": added.endpoint.endpoint_id}))
            assert status == 200
            assert answer == json_format.MessageToDict(added, preserving_proto_field_name=True)
            with pytest.raises(grpc.RpcError) as info:
                stub.AddEndpoint(json_format.ParseDict(dict(ADD, auto_ipv4=2),
                                                       endpoint_pb2.AddEndpointRequest()),
                                 timeout=10)
            status, answer = post(gateway.path, "AddEndpoint", json.dumps(dict(ADD, auto_ipv4=2)))
            assert (answer["code"], answer["message"]) == (info.value.code().name,
                                                           info.value.details())
    finally:
        server.stop(grace=None).wait()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"x"', b"\xff\xfe",
                                  b'{"auto_ipv4": "two"}', b'{"no_such_field": 1}'])
def test_bad_json_is_invalid_argument(world, body):
    manager, _, gateway, _ = world
    status, answer = post(gateway.path, "AddEndpoint", body)
    assert status == 400 and answer["code"] == "INVALID_ARGUMENT"
    assert answer["message"].startswith("Invalid AddEndpointRequest in the body: ")
    assert manager.list() == []


def test_unknown_method_is_404(world):
    _, _, gateway, _ = world
    status, answer = post(gateway.path, "NoSuchMethod", "{}")
    assert (status, answer["code"]) == (404, "UNIMPLEMENTED")
    assert "AddEndpoint" in answer["message"]
    status, answer = post(gateway.path, "../../other.Service/AddEndpoint", "{}")
    assert (status, answer["code"]) == (404, "UNIMPLEMENTED")


def test_http_edges(world):
    _, _, gateway, _ = world
    assert post(gateway.path, "GetNodeInfo", "", verb="GET")[0] == 405
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(gateway.path)
    try:
        conn.putrequest("POST", f"{PATH_PREFIX}GetNodeInfo")   # no Content-Length: no body
        conn.endheaders()
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["node"]) == (200, "node-1")
        # Kept alive: a chunked body on the same connection is refused (answered
        # before the body is sent, so that the closing server breaks no pipe).
        conn.putrequest("POST", f"{PATH_PREFIX}GetNodeInfo")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["code"]) == (411, "INVALID_ARGUMENT")
    finally:
        conn.close()


def test_domain_errors_map_as_for_grpc(world):
    manager, dataplane, gateway, _ = world
    assert post(gateway.path, "AddEndpoint", json.dumps(ADD))[0] == 200
    cases = [
        ("GetEndpoint", {"endpoint_id": "0" * 32}, 404, "NOT_FOUND", "not found on node"),
        ("AddEndpoint", dict(ADD, auto_ipv4=2), 409, "ALREADY_EXISTS", "already been configured"),
        ("AddEndpoint", dict(ADD, workload_id="wl2", netns_path="/nope"), 400,
         "FAILED_PRECONDITION", "wl2 is not currently running"),
        ("AddEndpoint", dict(ADD, workload_id="wl2", mtu=20), 400, "INVALID_ARGUMENT",
         "Invalid mtu 20"),
        ("RemoveEndpoint", {"orchestrator": "cni", "workload_id": "wl9"}, 404, "NOT_FOUND",
         "Container wl9 doesn't contain any endpoints."),
    ]
    for method, request, http_status, code, words in cases:
        status, answer = post(gateway.path, method, json.dumps(request))
        assert (status, answer["code"]) == (http_status, code), answer
        assert words in answer["message"]


@pytest.mark.parametrize("error, http_status", [
    (errors.Unavailable("Error accessing etcd (127.0.0.1:2379)."), 503),
    (errors.Aborted("Lost the race."), 409),
    (errors.ResourceExhausted("Full."), 429),
    (RuntimeError("a bug"), 500),
])
def test_other_errors_map_through_status_for(world, error, http_status):
    manager, dataplane, gateway, _ = world
    dataplane.error = error
    status, answer = post(gateway.path, "AddEndpoint", json.dumps(ADD))
    expected = status_for(error).name if isinstance(error, errors.CalicoError) else "INTERNAL"
    assert (status, answer["code"]) == (http_status, expected)
    if expected == "INTERNAL":
        assert answer["message"] == "Unexpected error in AddEndpoint; see the service log."
    else:
        assert answer["message"] == str(error)
    assert manager.list() == []


def test_the_cni_client_and_its_cni_codes(world):
    manager, _, gateway, _ = world
    endpoints = client(gateway)
    ep = endpoints.add_endpoint(**ADD, mtu=1500)
    assert isinstance(ep, Endpoint) and ep.state == "active" and ep.mtu == 1500
    assert ep.ipv6_nets == [] and ep.labels == {} and ep.persistent is False
    assert [e.endpoint_id for e in endpoints.list_endpoints()] == [ep.endpoint_id]
    assert endpoints.get_node_info() == {"node": "node-1", "ipv4": True, "ipv6": True}
    with pytest.raises(RpcFailure) as info:
        endpoints.add_endpoint(**dict(ADD, auto_ipv4=2))
    assert info.value.status == "ALREADY_EXISTS" and info.value.to_cni().code == 103
    assert [e.endpoint_id for e in endpoints.remove_endpoint(
        orchestrator="cni", workload_id="wl1")] == [ep.endpoint_id]
    with pytest.raises(RpcFailure) as info:
        endpoints.remove_endpoint(orchestrator="cni", workload_id="wl1")
    assert info.value.status == "NOT_FOUND" and info.value.to_cni().code == 101


def test_stopped_gateway_is_unavailable_and_its_socket_gone(world):
    _, _, gateway, _ = world
    gateway.stop(grace=1)
    with pytest.raises(RpcFailure) as info:
        client(gateway).get_node_info()
    err = info.value.to_cni()
    assert (info.value.status, err.code) == ("UNAVAILABLE", 11)
    assert err.msg == f"The endpoint service at unix:{gateway.path} cannot be reached."


def test_no_answer_in_time_is_deadline_exceeded(tmp_path):
    path = str(tmp_path / "silent.json.sock")
    with socket.socket(socket.AF_UNIX) as silent:      # accepts (backlog), never answers
        silent.bind(path)
        silent.listen(4)
        endpoints = EndpointClient(Services("n", "unix:/x", "", "", 0.2, path))
        with pytest.raises(RpcFailure) as info:
            endpoints.get_node_info()
    err = info.value.to_cni()
    assert (info.value.status, err.code) == ("DEADLINE_EXCEEDED", 11)
    assert "did not answer in time" in err.msg


def test_the_clients_endpoint_has_every_field_of_the_message():
    assert set(Endpoint.FIELDS) == {f.name for f in endpoint_pb2.Endpoint.DESCRIPTOR.fields}


def test_socket_is_root_only_whatever_the_umask(world, tmp_path):
    manager = world[0]
    old = os.umask(0)
    try:
        gateway = JsonGateway(str(tmp_path / "other.json.sock"), manager)
        gateway.start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(gateway.path).st_mode) == 0o600
    finally:
        gateway.stop(grace=1)


def test_peer_uid_is_the_connecting_process_uid():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert local_socket.peer_uid(a) == os.getuid()


def test_a_caller_that_is_not_root_is_refused(world, monkeypatch):
    manager, _, gateway, _ = world
    monkeypatch.setattr(json_gateway, "peer_uid", lambda conn: 65534)
    refusal = (403, {"code": "PERMISSION_DENIED", "message": "Only root may call the endpoint "
                     "service; this process runs as uid 65534."})
    assert post(gateway.path, "AddEndpoint", json.dumps(ADD)) == refusal
    assert post(gateway.path, "ListEndpoints", "{}", verb="GET") == refusal
    assert manager.list() == []


def test_the_callers_grpc_timeout_bounds_the_add(world):
    """As with grpc-gateway, a Grpc-Timeout header is the call's deadline: an
    add with too little of it left gives up before claiming, and undoes."""
    manager, dataplane, gateway, _ = world
    status, answer = post(gateway.path, "AddEndpoint", json.dumps(ADD),
                          {"Grpc-Timeout": "500m"})
    assert (status, answer["code"]) == (504, "DEADLINE_EXCEEDED")
    assert manager.list() == [] and not dataplane.interfaces
    status, answer = post(gateway.path, "AddEndpoint", json.dumps(ADD),
                          {"Grpc-Timeout": "10S"})
    assert status == 200 and answer["endpoint"]["ipv4_nets"]
    status, answer = post(gateway.path, "ListEndpoints", "{}", {"Grpc-Timeout": "soon"})
    assert (status, answer) == (400, {"code": "INVALID_ARGUMENT", "message":
                                      "Invalid Grpc-Timeout 'soon': give digits and a unit "
                                      "(H, M, S, m, u or n), e.g. 10S."})


def test_the_cni_client_sends_its_timeout(world):
    manager, dataplane, gateway, _ = world
    seen = []
    real = gateway.call
    gateway.call = lambda path, body, timeout=None: seen.append(timeout) or real(path, body,
                                                                                timeout)
    client(gateway, timeout=7.5).add_endpoint(**ADD)
    assert seen == [7.5]
