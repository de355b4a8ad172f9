"""The network driver ("calico"): one Docker network is one Calico profile.

Docker calls, for each container on a network: CreateEndpoint (addresses
known, from calico-ipam), Join (the sandbox exists, the container not yet
started), and at stop Leave and DeleteEndpoint. The endpoint service does the
plumbing at CreateEndpoint, "detached": the veth's workload side waits in the
host's namespace under a name derived from Docker's endpoint id, and Join
tells Docker to move it into the container and to route through the host.

The endpoint names the IPAM handles of its addresses in its label
``docker-ipam-handles`` (from the IPAM driver, ``handle_of``), which ties
them together for IPAM's garbage collector (services/ipam/owners.py).

Networks are local to each engine (as Docker keeps them without a cluster
store), so every host runs ``docker network create`` for itself; the profile
is named after the network, which is what makes "web" on one host and "web"
on another the same network.
"""

from __future__ import annotations

import logging

from calico.endpoint.v1 import endpoint_pb2
from calico.policy.v1 import policy_pb2
from calicopy import failpoints
from calicopy.errors import AlreadyExists, CalicoError, InvalidArgument, NotFound
from calicopy.model.endpoint import DOCKER_IPAM_HANDLES_LABEL, IPV4_GATEWAY, IPV6_GATEWAY
from node.docker_plugin.ipam import ADDRESS_SPACES

log = logging.getLogger(__name__)

ORCHESTRATOR = "docker"
NETWORK_LABEL = "docker-network-id"
IPAM_HANDLES_LABEL = DOCKER_IPAM_HANDLES_LABEL
PEER_PREFIX = "tmp"
ROUTE_CONNECTED = 1        # libnetwork's RouteType for an on-link route


def peer_name(endpoint_id: str) -> str:
    return PEER_PREFIX + endpoint_id[:11]


def _addresses(interface: dict) -> list[str]:
    return [a.split("/")[0] for a in (interface.get("Address"), interface.get("AddressIPv6")) if a]


class NetworkDriver:
    def __init__(self, endpoints, policy, docker, handles=None):
        self.endpoints = endpoints      # calicopy.rpc.Client of this node's endpoint service
        self.policy = policy            # calicopy.rpc.Client of the policy service
        self.docker = docker            # calicopy.docker_engine.LocalEngine
        self.handles = handles          # address -> its IPAM handle (IpamDriver.handle_of)
        # Network id -> profile, once made sure of: a network's id and name
        # never change, and the lookups are most of a CreateEndpoint's time.
        self._profiles: dict[str, str] = {}

    def methods(self) -> dict:
        nothing = lambda _: {}          # noqa: E731
        return {
            "NetworkDriver.GetCapabilities":
                lambda _: {"Scope": "local", "ConnectivityScope": "global"},
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": nothing,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.EndpointOperInfo": lambda _: {"Value": {}},
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": nothing,
            "NetworkDriver.DiscoverNew": nothing,
            "NetworkDriver.DiscoverDelete": nothing,
            "NetworkDriver.ProgramExternalConnectivity": nothing,
            "NetworkDriver.RevokeExternalConnectivity": nothing,
        }

    @staticmethod
    def create_network(req: dict) -> dict:
        ours = set(ADDRESS_SPACES.values())
        for data in (req.get("IPv4Data") or []) + (req.get("IPv6Data") or []):
            if data.get("AddressSpace") not in ours:
                raise InvalidArgument("Calico networks need Calico addresses: create the "
                                      "network with --ipam-driver calico-ipam.")
        return {}

    def _profile_for(self, network_id: str) -> str:
        """The network's name (Docker does not send it), as a profile that exists."""
        if network_id in self._profiles:
            return self._profiles[network_id]
        with self.docker.inspecting(f"network named {network_id}") as client:
            name = client.networks.get(network_id).name
        try:
            self.policy.call("CreateProfile", policy_pb2.CreateProfileRequest(name=name))
            log.info("created profile %s for Docker network %s", name, network_id[:12])
        except AlreadyExists:
            pass
        except InvalidArgument as exc:
            raise InvalidArgument(f"Docker network {name} cannot be a Calico profile: {exc} "
                                  "Recreate the network under such a name.") from None
        self._profiles[network_id] = name
        return name

    def create_endpoint(self, req: dict) -> dict:
        interface = req.get("Interface") or {}
        ips = _addresses(interface)
        if not ips:
            raise InvalidArgument("Docker gave the endpoint no address: create the network "
                                  "with --ipam-driver calico-ipam.")
        network_id, docker_ep = req["NetworkID"], req["EndpointID"]
        profile = self._profile_for(network_id)
        labels = {"docker-network": profile, NETWORK_LABEL: network_id}
        if self.handles is not None:
            labels[IPAM_HANDLES_LABEL] = ",".join(filter(None, map(self.handles, ips)))
        ep = self.endpoints.call("AddEndpoint", endpoint_pb2.AddEndpointRequest(
            orchestrator=ORCHESTRATOR, workload_id=docker_ep, peer_name=peer_name(docker_ep),
            ips=ips, ips_preassigned=True, profile_ids=[profile],
            mac=interface.get("MacAddress") or "", labels=labels)).endpoint
        failpoints.reached("docker-create-endpoint")      # made, Docker not told yet
        # Docker keeps a MAC it chose; it takes ours only when it had none.
        return {} if interface.get("MacAddress") else {"Interface": {"MacAddress": ep.mac}}

    def delete_endpoint(self, req: dict) -> dict:
        try:
            self.endpoints.call("RemoveEndpoint", endpoint_pb2.RemoveEndpointRequest(
                orchestrator=ORCHESTRATOR, workload_id=req["EndpointID"]))
        except NotFound:
            pass        # already gone: deleting twice is fine
        return {}

    def remove_holders(self, ip: str) -> None:
        """Remove the endpoints this driver made that hold ``ip``. Docker
        releases an address only once it has no endpoint with it (after
        DeleteEndpoint, or after a CreateEndpoint it saw fail, e.g. the plugin
        died before answering): an endpoint still holding it is one Docker
        gave up, and freeing the address under it would let IPAM give it to
        a second workload."""
        found = self.endpoints.call("ListEndpoints", endpoint_pb2.ListEndpointsRequest(
            orchestrator=ORCHESTRATOR)).endpoints
        for ep in found:
            nets = [n.split("/")[0] for n in (*ep.ipv4_nets, *ep.ipv6_nets)]
            if ep.labels.get(NETWORK_LABEL) and ip in nets:
                log.info("removing endpoint %s, which Docker gave up with %s",
                         ep.workload_id[:12], ip)
                self.delete_endpoint({"EndpointID": ep.workload_id})

    def join(self, req: dict) -> dict:
        found = self.endpoints.call("ListEndpoints", endpoint_pb2.ListEndpointsRequest(
            orchestrator=ORCHESTRATOR, workload_id=req["EndpointID"])).endpoints
        if not found:
            raise NotFound(f"Endpoint {req['EndpointID'][:12]} is not known to calico-py on "
                           "this host; was the network created with --driver calico?")
        ep = found[0]
        answer = {"InterfaceName": {"SrcName": peer_name(req["EndpointID"]),
                                    "DstPrefix": "eth"},
                  "DisableGatewayService": True}
        if ep.ipv4_nets:
            answer["Gateway"] = IPV4_GATEWAY
            answer["StaticRoutes"] = [{"Destination": f"{IPV4_GATEWAY}/32",
                                       "RouteType": ROUTE_CONNECTED}]
        if ep.ipv6_nets:
            answer["GatewayIPv6"] = IPV6_GATEWAY
        return answer

    def collect(self, suspects: set[str]) -> set[str]:
        """Remove the endpoints this driver made that Docker no longer has
        (DeleteEndpoint lost to a timeout or to a node restart). An endpoint
        exists a moment before its container joins, so only one missing on
        two passes in a row goes. Returns this pass's missing ones."""
        found = self.endpoints.call("ListEndpoints", endpoint_pb2.ListEndpointsRequest(
            orchestrator=ORCHESTRATOR)).endpoints
        by_network: dict[str, list] = {}
        for ep in found:
            if ep.labels.get(NETWORK_LABEL):    # the proxy's endpoints are not ours
                by_network.setdefault(ep.labels[NETWORK_LABEL], []).append(ep)
        missing = set()
        for network_id, eps in by_network.items():
            try:
                with self.docker.inspecting(f"network named {network_id}") as client:
                    joined = client.networks.get(network_id).attrs.get("Containers") or {}
                live = {c.get("EndpointID") for c in joined.values()}
            except NotFound:
                live = set()
            missing |= {ep.workload_id for ep in eps if ep.workload_id not in live}
        for docker_ep in sorted(missing & suspects):
            log.info("removing endpoint %s, which Docker no longer has", docker_ep[:12])
            try:
                self.delete_endpoint({"EndpointID": docker_ep})
            except CalicoError as exc:
                log.warning("could not remove endpoint %s: %s", docker_ep[:12], exc)
        return missing - suspects
