"""The Docker plugin's protocol and IPAM driver, spoken to as Docker does (JSON
over HTTP on a unix socket), against the real IPAM service and etcd."""

import http.client
import json
import socket
import threading

import pytest

from calico.ipam.v1 import ipam_pb2_grpc
from calicopy.rpc import Client
from node.docker_plugin import protocol
from node.docker_plugin.ipam import IpamDriver


class _Conn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.unix_path)


@pytest.fixture
def plugin(ipam_addr, ipam_client, tmp_path):
    """POST(method, body) -> (status, answer) against a served IPAM driver."""
    ipam_client.create_pool(pool={"cidr": "10.20.0.0/16"})
    ipam_client.create_pool(pool={"cidr": "fd80::/64"})
    client = Client("IPAM service", ipam_addr, ipam_pb2_grpc.IpamServiceStub, 10)
    methods = {"Plugin.Activate": lambda _: {"Implements": ["IpamDriver"]}}
    methods.update(IpamDriver(client, "host-a").methods())
    path = str(tmp_path / "calico.sock")
    server = protocol.serve(path, methods)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def post(method, body=None, raw=None):
        conn = _Conn(path)
        conn.request("POST", f"/{method}", body=raw if raw is not None else json.dumps(body or {}))
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
        return resp.status, answer
    try:
        yield post
    finally:
        server.shutdown()
        server.server_close()
        client.close()


def test_handshake_and_unknown_methods(plugin):
    assert plugin("Plugin.Activate") == (200, {"Implements": ["IpamDriver"]})
    status, answer = plugin("NetworkDriver.Bogus")
    assert status == 404 and "not implemented" in answer["Err"]
    status, answer = plugin("IpamDriver.RequestPool", raw="{not json")
    assert status == 400 and "malformed request" in answer["Err"]


def test_any_pool_and_auto_addresses(plugin, ipam_client):
    status, pool = plugin("IpamDriver.RequestPool", {"AddressSpace": "CalicoLocal"})
    assert status == 200 and pool["Pool"] == "0.0.0.0/0"
    assert pool["Data"]["com.docker.network.gateway"] == "0.0.0.0/0"
    _, a = plugin("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"]})
    _, b = plugin("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"]})
    assert a["Address"] != b["Address"] and a["Address"].startswith("10.20.")
    assert a["Address"].endswith("/32")
    ip = a["Address"].split("/")[0]
    found = ipam_client.get_allocation(ip=ip)
    assert found.allocated and found.handle_id.startswith("host-a/docker-ipam/")
    assert plugin("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"],
                                                "Address": a["Address"]}) == (200, {})
    assert not ipam_client.get_allocation(ip=ip).allocated
    # Releasing again is harmless (Docker repeats itself after a crash).
    assert plugin("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"],
                                                "Address": a["Address"]}) == (200, {})
    _, v6 = plugin("IpamDriver.RequestPool", {"V6": True})
    _, c = plugin("IpamDriver.RequestAddress", {"PoolID": v6["PoolID"]})
    assert c["Address"].startswith("fd80::") and c["Address"].endswith("/128")


def test_subnet_must_be_a_pool_and_ip_inside_it(plugin, ipam_client):
    status, answer = plugin("IpamDriver.RequestPool", {"Pool": "10.99.0.0/16"})
    assert status == 500
    assert answer["Err"].startswith("Subnet 10.99.0.0/16 is not a Calico pool")
    _, pool = plugin("IpamDriver.RequestPool", {"Pool": "10.20.0.0/16"})
    assert pool["Pool"] == "10.20.0.0/16"
    assert plugin("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"],
                                                "Address": "10.20.9.9"}) == \
        (200, {"Address": "10.20.9.9/32", "Data": {}})
    status, answer = plugin("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"],
                                                          "Address": "10.20.9.9"})
    assert status == 500 and "10.20.9.9 is already assigned" in answer["Err"]
    status, answer = plugin("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"],
                                                          "Address": "10.30.0.1"})
    assert status == 500 and "not in this network's subnet" in answer["Err"]
    status, answer = plugin("IpamDriver.RequestAddress", {
        "PoolID": pool["PoolID"], "Address": "10.20.0.1",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert status == 500 and "leave --gateway out" in answer["Err"]
    usage = ipam_client.get_usage()
    assert sum(p.allocated for p in usage.pools) == 1
