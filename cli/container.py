"""Give workloads Calico interfaces and addresses on this node.

Usage:
  calicoctl container add <CONTAINER> <IP> [--interface=<IF>]
  calicoctl container remove <CONTAINER> [--force]
  calicoctl container <CONTAINER> ip (add|remove) <IP> [--interface=<IF>]
  calicoctl container show [-o <FORMAT>]

Options:
  --interface=<IF>  The interface inside the container [default: eth0].
  --force           Remove the container's endpoints even if the container
                    itself is gone.
  -o <FORMAT>       Output format: table (the default) or json (its shape is
                    in docs/cli-json.md).

<CONTAINER> is netns:<name|path> for a network namespace (a name under
/var/run/netns, or a path), pid:<N> for the namespace of a process, or a
Docker container's name or id (from the engine at DOCKER_HOST). A Docker
container keeps the endpoint given here while it is stopped and gets it back
when it starts again (the node's Docker proxy re-instates it); `docker rm`
ends it. A container on Calico Docker networks is networked by Docker: use
`docker network connect/disconnect` for it.
<IP> is an address; "auto" or "ipv4" for an IPv4 address from any pool;
"ipv6" for an IPv6 address; or a pool's CIDR for an address from that pool
(`ip remove` takes an address).
These commands talk to this node's endpoint service and must run as root.
"""

from __future__ import annotations

from calico.endpoint.v1 import endpoint_pb2
from cli import client, output, validate, workloads
from cli.errors import CliError
from cli.output import table


def run(args: dict) -> None:
    validate.root()
    if args["show"]:
        show(args)
    elif args["add"] and not args["ip"]:
        add(args["<CONTAINER>"], args["<IP>"], args["--interface"])
    elif args["remove"] and not args["ip"]:
        remove(args["<CONTAINER>"], args["--force"])
    elif args["add"]:
        address(args["<CONTAINER>"], args["<IP>"], args["--interface"], add=True)
    else:
        address(args["<CONTAINER>"], args["<IP>"], args["--interface"], add=False)


def _call(method, request, workload=None):
    try:
        return client.call(client.endpoint(), method, request)
    except CliError as exc:
        raise CliError(workload.say(str(exc)) if workload else str(exc)) from None


def _docker_endpoints(workload, action: str) -> list:
    """A Docker container's own endpoints (keyed by its id). Refuses to
    change by hand what Docker's network driver set up."""
    own, driver = workloads.endpoints(workload, client.endpoint())
    if driver and not own:
        raise CliError(f"{workload.name} is on Calico Docker networks, which Docker manages; "
                       f"use 'docker network {action}' instead.")
    return own


def address_request(spec: str) -> dict:
    """The AddEndpoint fields for an <IP> argument."""
    word = spec.lower()
    if word in ("auto", "ipv4"):
        return {"auto_ipv4": 1}
    if word == "ipv6":
        return {"auto_ipv6": 1}
    if "/" in spec:
        cidr, _ = validate.cidr(spec)
        pools = "ipv6_pools" if ":" in cidr else "ipv4_pools"
        return {pools: [cidr], "auto_ipv6" if ":" in cidr else "auto_ipv4": 1}
    return {"ips": [validate.ip(spec)]}


def add(container: str, spec: str, interface: str) -> None:
    fields = address_request(spec)
    workload = workloads.find(container)
    extra = {}
    # The original tool's order: already networked, then not running. (The
    # service would take the same add again as a retry, and succeed.)
    own = (_docker_endpoints(workload, "connect") if workload.is_docker
           else workloads.endpoints(workload, client.endpoint())[0])
    if any(ep.interface_name == interface for ep in own):
        raise CliError(f"{container} has already been configured with Calico Networking.")
    if workload.is_docker:
        if not workload.running:
            raise CliError(f"{container} is not currently running.")
        extra = {"persistent": True, "labels": {"created-by": "calicoctl"}}
    request = endpoint_pb2.AddEndpointRequest(
        orchestrator=workload.orchestrator, workload_id=workload.workload_id,
        interface_name=interface, **fields, **extra)
    if workload.pid:
        request.pid = workload.pid
    else:
        request.netns_path = workload.netns_path
    ep = _call("AddEndpoint", request, workload).endpoint
    for net in list(ep.ipv4_nets) + list(ep.ipv6_nets):
        print(f"IP {net.split('/')[0]} added to {container}")


def _removed_container(container: str) -> workloads.Workload:
    """With --force: a Docker container that no longer exists, found by the
    id (or a prefix of it) its endpoints are keyed by."""
    eps = _call("ListEndpoints", endpoint_pb2.ListEndpointsRequest()).endpoints
    ids = {ep.workload_id for ep in eps if ep.orchestrator == workloads.DOCKER
           and ep.workload_id.startswith(container)}
    if len(container) < 4 or len(ids) != 1:
        raise CliError(f"Container {container} not found." + (
            " Give more of its id." if len(ids) > 1 else ""))
    return workloads.Workload(workloads.DOCKER, ids.pop(), name=container, running=False)


def remove(container: str, force: bool) -> None:
    try:
        workload = workloads.identify(container) if force else workloads.find(container)
    except CliError:
        if not force:
            raise
        workload = _removed_container(container)
    if workload.is_docker:
        _docker_endpoints(workload, "disconnect")
    _call("RemoveEndpoint", endpoint_pb2.RemoveEndpointRequest(
        orchestrator=workload.orchestrator, workload_id=workload.workload_id), workload)
    print(f"Removed Calico interface from {container}")


def address(container: str, spec: str, interface: str, add: bool) -> None:
    workload = workloads.find(container)
    workload_id = workload.workload_id
    if workload.is_docker:
        own, driver = workloads.endpoints(workload, client.endpoint())
        if not own:     # then the driver's endpoint on that interface, which says who owns it
            workload_id = next((ep.workload_id for ep in driver
                                if ep.interface_name == interface), workload_id)
        if not workload.running:
            raise CliError(f"{container} is not currently running.")
    ids = dict(orchestrator=workload.orchestrator, workload_id=workload_id,
               interface_name=interface)
    if not add:
        ip = validate.ip(spec)
        _call("RemoveAddress", endpoint_pb2.RemoveAddressRequest(ip=ip, **ids), workload)
        print(f"IP {ip} removed from {container}")
        return
    fields = address_request(spec)
    fields["ip"] = fields.pop("ips", [""])[0]
    before = {ep.endpoint_id: set(ep.ipv4_nets) | set(ep.ipv6_nets) for ep in _call(
        "ListEndpoints", endpoint_pb2.ListEndpointsRequest(
            orchestrator=workload.orchestrator, workload_id=workload_id)).endpoints}
    ep = _call("AddAddress", endpoint_pb2.AddAddressRequest(**ids, **fields), workload).endpoint
    added = (set(ep.ipv4_nets) | set(ep.ipv6_nets)) - before.get(ep.endpoint_id, set())
    for net in sorted(added):
        print(f"IP {net.split('/')[0]} added to {container}")


def show(args: dict) -> None:
    eps = _call("ListEndpoints", endpoint_pb2.ListEndpointsRequest()).endpoints
    doc = {"endpoints": [{"orchestrator": ep.orchestrator, "workload_id": ep.workload_id,
                          "interface_name": ep.interface_name,
                          "host_interface": ep.host_interface,
                          "ipv4_nets": list(ep.ipv4_nets), "ipv6_nets": list(ep.ipv6_nets),
                          "mac": ep.mac, "state": ep.state, "profile_ids": list(ep.profile_ids),
                          "endpoint_id": ep.endpoint_id} for ep in eps]}

    def render(doc):
        return table(["Container", "Interface", "Host interface", "Addresses", "MAC", "State",
                      "Profiles", "Endpoint ID"],
                     [[e["workload_id"], e["interface_name"], e["host_interface"],
                       ", ".join(e["ipv4_nets"] + e["ipv6_nets"]), e["mac"], e["state"],
                       ",".join(e["profile_ids"]), e["endpoint_id"]] for e in doc["endpoints"]])
    output.emit(args, "ContainerList", doc, render)
