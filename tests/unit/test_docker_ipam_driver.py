"""The Docker plugin's two drivers and IPAM: each address is claimed under a
request id (so a retried IPAM call repeats it), and the endpoint made for it
names its handle (so IPAM's garbage collector can tie the two). The IPAM
service runs in-process (its servicer over an in-memory store)."""

from types import SimpleNamespace

from calico.endpoint.v1 import endpoint_pb2
from calicopy.datastore import keys
from node.docker_plugin.ipam import IpamDriver
from node.docker_plugin.network import IPAM_HANDLES_LABEL, NetworkDriver
from services.ipam.allocator import Ipam
from services.ipam.servicer import IpamServicer
from tests.fakes import MemoryStore
from tests.unit.test_docker_network_driver import Engine


class _Context:
    @staticmethod
    def abort(code, details):
        raise RuntimeError(f"{code.name}: {details}")

    @staticmethod
    def time_remaining():
        return None


class InProcessIpam:
    """Client.call's shape, answered by the real servicer."""

    def __init__(self, ipam):
        self.servicer = IpamServicer(ipam)

    def call(self, method, request):
        return getattr(self.servicer, method)(request, _Context())


class Endpoints:
    """The endpoint service as a dict of the endpoints it was asked to add."""

    def __init__(self):
        self.added = {}

    def call(self, method, request):
        if method == "ListEndpoints":
            return SimpleNamespace(endpoints=[
                endpoint_pb2.Endpoint(workload_id=w, ipv4_nets=[f"{ip}/32" for ip in r.ips],
                                      labels=r.labels) for w, r in self.added.items()])
        if method == "RemoveEndpoint":
            del self.added[request.workload_id]
            return SimpleNamespace(removed=[])
        assert method == "AddEndpoint"
        self.added[request.workload_id] = request
        return SimpleNamespace(endpoint=endpoint_pb2.Endpoint(mac="02:00:00:00:00:01"))


class Policy:
    @staticmethod
    def call(method, request):
        return SimpleNamespace()


def test_addresses_are_claimed_under_a_request_and_tied_to_their_endpoint():
    store = MemoryStore()
    ipam = Ipam(store)
    ipam.create_pool("10.0.0.0/24")
    client = InProcessIpam(ipam)
    driver = IpamDriver(client, "node-1")
    address = driver.request_address({"PoolID": "calico:0.0.0.0/0"})["Address"]
    ip = address.split("/")[0]
    handle = ipam.get_allocation(ip)["handle_id"]
    assert handle.startswith("node-1/docker-ipam/")
    requests = store.json(keys.handle(handle))["requests"]
    assert list(requests) == [handle.rsplit("/", 1)[1]]

    endpoints = Endpoints()
    network = NetworkDriver(endpoints, Policy(), Engine({"n1": []}), handles=driver.handle_of)
    network.create_endpoint({"NetworkID": "n1", "EndpointID": "dep1",
                             "Interface": {"Address": address}})
    assert endpoints.added["dep1"].labels[IPAM_HANDLES_LABEL] == handle
    # A plugin restarted in between finds the handle through IPAM.
    restarted = IpamDriver(client, "node-1")
    assert restarted.handle_of(ip) == handle


def test_releasing_an_address_removes_the_endpoint_docker_gave_up_with_it():
    """The plugin died after making an endpoint, before answering Docker:
    Docker releases the address. The endpoint still holding it goes first,
    so the address is never free while a workload has it."""
    ipam = Ipam(MemoryStore())
    ipam.create_pool("10.0.0.0/24")
    driver = IpamDriver(InProcessIpam(ipam), "node-1")
    endpoints = Endpoints()
    network = NetworkDriver(endpoints, Policy(), Engine({"n1": []}), handles=driver.handle_of)
    driver.before_release = network.remove_holders
    given = [driver.request_address({"PoolID": "calico:0.0.0.0/0"})["Address"]
             for _ in range(2)]
    for n, address in enumerate(given):
        network.create_endpoint({"NetworkID": "n1", "EndpointID": f"dep{n}",
                                 "Interface": {"Address": address}})
    lost = given[0].split("/")[0]
    driver.release_address({"Address": lost})
    assert list(endpoints.added) == ["dep1"]
    assert not ipam.get_allocation(lost)["allocated"]
    assert ipam.get_allocation(given[1].split("/")[0])["allocated"]
