"""The Docker network driver's bookkeeping, with in-memory stand-ins for the
endpoint service and the engine."""

from types import SimpleNamespace

import docker.errors

from calicopy import docker_engine
from calicopy.errors import NotFound
from node.docker_plugin.network import NETWORK_LABEL, NetworkDriver


class Endpoints:
    def __init__(self, eps):
        self.eps = eps          # workload id -> labels

    def call(self, method, request):
        if method == "ListEndpoints":
            return SimpleNamespace(endpoints=[SimpleNamespace(workload_id=w, labels=labels)
                                              for w, labels in self.eps.items()])
        assert method == "RemoveEndpoint"
        if self.eps.pop(request.workload_id, None) is None:
            raise NotFound("gone")
        return SimpleNamespace(removed=[])


class Engine(docker_engine.Engine):
    """The engine with its SDK client faked: networks by id, the SDK's
    NotFound for the others (which the engine turns into the project's)."""

    def __init__(self, networks):
        super().__init__("/nonexistent/docker.sock")
        self.networks = networks    # network id -> joined endpoint ids

    def client(self):
        return SimpleNamespace(networks=SimpleNamespace(get=self._network))

    def _network(self, network_id):
        if network_id not in self.networks:
            raise docker.errors.NotFound(f"network {network_id} not found")
        return SimpleNamespace(id=network_id, name=f"net-{network_id}", attrs={
            "Id": network_id, "Name": f"net-{network_id}",
            "Containers": {f"c{i}": {"EndpointID": e}
                           for i, e in enumerate(self.networks[network_id])}})


def test_endpoints_docker_forgot_go_after_two_passes():
    eps = Endpoints({"joined": {NETWORK_LABEL: "n1"}, "lost": {NETWORK_LABEL: "n1"},
                     "old-net": {NETWORK_LABEL: "n2"}, "proxied": {}})
    driver = NetworkDriver(eps, policy=None, docker=Engine({"n1": ["joined"]}))
    suspects = driver.collect(set())
    assert suspects == {"lost", "old-net"} and len(eps.eps) == 4   # not yet: may be joining
    eps.eps["fresh"] = {NETWORK_LABEL: "n1"}
    suspects = driver.collect(suspects)
    assert set(eps.eps) == {"joined", "proxied", "fresh"} and suspects == {"fresh"}
