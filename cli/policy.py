"""Why a packet between two workloads passes or is dropped; what workloads
may send their own host.

Usage:
  calicoctl policy explain <SRC> <DST> [--protocol=<P>] [--port=<N>] [-o <FORMAT>]
  calicoctl policy endpoint-to-host [-o <FORMAT>]
  calicoctl policy endpoint-to-host <ACTION>
  calicoctl policy drops [--follow] [--node=<N>] [--endpoint=<ID>] [-o <FORMAT>]

Options:
  --protocol=<P>   tcp, udp, icmp or icmpv6 (default: a ping).
  --port=<N>       The destination port, for tcp and udp.
  -o <FORMAT>      Output format: table (the default) or json (its shape is in
                   docs/cli-json.md; with --follow, one JSON object per line).
  --follow         Keep printing drops as they happen, until interrupted.
  --node=<N>       Only node N's drops.
  --endpoint=<ID>  Only drops to, from or decided by endpoint ID.

explain: <SRC> and <DST> are addresses, or containers on this node
(netns:<name>, pid:<N>), which stand for their first address. The verdict is
computed from the same model the policy agents program into iptables: the
source's outbound rules, then the destination's inbound rules, naming the
profile rule that decided (the first rule of the endpoint's profiles, in
order, that matches: allow or deny, it is final). To an address of the
source's own node, the endpoint-to-host action decides instead.

endpoint-to-host: what every node does with traffic from its workloads to
the node itself, once the workload's outbound rules allowed it. <ACTION> is
drop (the default: pings to the host pass, nothing else), return (the host's
own INPUT rules decide) or accept (everything passes). Without <ACTION>, print
the current one. Every node applies a change at once.

drops: the packets the nodes' policy denied lately (each node keeps its last
200 samples; at most 100 per second per rule are sampled), oldest first: time
(UTC), node, protocol, source and destination (address, port, workload) and
the verdict in explain's words, e.g. "denied by profile DB inbound rule 2:
deny [netns:db1]". Asks every registered node through etcd, as the operator
(ETCD_ENDPOINTS); a node that does not answer within 5 seconds is named on
stderr.
"""

from __future__ import annotations

import ipaddress

from calico.endpoint.v1 import endpoint_pb2
from calico.policy.v1 import policy_pb2
from calicopy.api.policy import action_from_msg, action_to_msg
from calicopy.model.policy import BadRule, check_endpoint_to_host_action
from cli import client, drops, output, workloads
from cli.errors import CliError


def _address(text: str, want_version: int | None = None) -> dict:
    """An end of the packet: its address, and the container given for it
    (None when an address was given)."""
    try:
        return {"ip": str(ipaddress.ip_address(text)), "container": None}
    except ValueError:
        pass
    workload = workloads.identify(text)
    eps = client.call(client.endpoint(), "ListEndpoints", endpoint_pb2.ListEndpointsRequest(
        orchestrator=workload.orchestrator, workload_id=workload.workload_id)).endpoints
    ips = [n.split("/")[0] for ep in eps for n in list(ep.ipv4_nets) + list(ep.ipv6_nets)]
    if want_version:
        ips = [ip for ip in ips if ipaddress.ip_address(ip).version == want_version]
    if not ips:
        raise CliError(f"{text} has no Calico address on this node.")
    return {"ip": ips[0], "container": text}


def _label(end: dict) -> str:
    return f"{end['ip']} ({end['container']})" if end["container"] else end["ip"]


def run(args: dict) -> None:
    if args["endpoint-to-host"]:
        endpoint_to_host(args, args["<ACTION>"])
    elif args["drops"]:
        drops.run(args)
    else:
        explain(args)


def endpoint_to_host(args: dict, action: str | None) -> None:
    policy = client.policy()
    if action is None:
        settings = client.call(policy, "GetPolicySettings",
                               policy_pb2.GetPolicySettingsRequest()).settings
        output.emit(args, "EndpointToHost",
                    {"action": action_from_msg(settings.endpoint_to_host_action)},
                    lambda doc: doc["action"])
        return
    try:
        check_endpoint_to_host_action(action)
    except BadRule as exc:
        raise CliError(str(exc)) from None
    client.call(policy, "SetPolicySettings", policy_pb2.SetPolicySettingsRequest(
        endpoint_to_host_action=action_to_msg(action)))
    print(f"Endpoint-to-host action set to {action}.")


def explain(args: dict) -> None:
    port = args["--port"]
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        raise CliError(f"Invalid port '{port}'.")
    src = _address(args["<SRC>"])
    dst = _address(args["<DST>"], ipaddress.ip_address(src["ip"]).version)
    resp = client.call(client.policy(), "Explain", policy_pb2.ExplainRequest(
        src=src["ip"], dst=dst["ip"], protocol=args["--protocol"] or "", port=int(port or 0)))
    doc = {"allowed": resp.allowed, "protocol": args["--protocol"],
           "port": int(port) if port else None, "src": src, "dst": dst,
           "steps": [{"direction": step.direction, "workload_id": step.workload_id,
                      "endpoint_id": step.endpoint_id, "allowed": step.allowed,
                      "profile": step.profile or None, "rule_number": step.rule_index or None,
                      "rule": step.rule or None, "text": step.text} for step in resp.steps],
           "notes": list(resp.notes)}

    def render(doc):
        what = doc["protocol"] or "ping"
        if doc["port"]:
            what += f" port {doc['port']}"
        return "\n".join(
            [f"{'ALLOWED' if doc['allowed'] else 'DENIED'}: {what} from {_label(doc['src'])} "
             f"to {_label(doc['dst'])}"] +
            [f"  {step['direction']:<8} {step['text']}" for step in doc["steps"]] +
            [f"  note: {note}" for note in doc["notes"]])
    output.emit(args, "PolicyExplanation", doc, render)
