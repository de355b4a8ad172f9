"""The nodes of the cluster and what runs on them.

Usage:
  calicoctl shownodes [--detailed] [-o <FORMAT>]

Options:
  --detailed    List every endpoint: workload, endpoint id, addresses, MAC, state.
  -o <FORMAT>   Output format: table (the default) or json (its shape is in
                docs/cli-json.md).
"""

from __future__ import annotations

from collections import Counter

from calico.bgp.v1 import bgp_pb2
from cli import client, output
from cli.output import table


def run(args: dict) -> None:
    nodes = client.call(client.bgp(), "ListNodes", bgp_pb2.ListNodesRequest(
        with_endpoints=True)).nodes
    detailed = args["--detailed"]
    doc = {"nodes": [_node(n, detailed) for n in nodes]}
    output.emit(args, "NodeList", doc, _render_detailed if detailed else _render)


def _node(n, detailed: bool) -> dict:
    node = {"name": n.node.name, "ipv4": n.node.ipv4, "ipv6": n.node.ipv6 or None,
            "as_num": n.node.as_num or None,
            "workloads": [{"orchestrator": kind, "count": count} for kind, count in
                          sorted(Counter(e.orchestrator for e in n.endpoints).items())]}
    if detailed:
        node["endpoints"] = [{"orchestrator": e.orchestrator, "workload_id": e.workload_id,
                              "endpoint_id": e.endpoint_id, "ipv4_nets": list(e.ipv4_nets),
                              "ipv6_nets": list(e.ipv6_nets), "mac": e.mac, "state": e.state}
                             for e in n.endpoints]
    return node


def _nodes_table(doc: dict) -> str:
    if not doc["nodes"]:
        return "No nodes are registered; start one with 'calicoctl node --ip=<IP>'."
    return table(["Host", "IPv4", "IPv6", "AS"],
                 [[n["name"], n["ipv4"], n["ipv6"] or "-", n["as_num"] or "(default)"]
                  for n in doc["nodes"]])


def _render(doc: dict) -> str:
    if not doc["nodes"]:
        return _nodes_table(doc)
    rows = []
    for n in doc["nodes"]:
        rows += [[n["name"], w["orchestrator"], w["count"]] for w in n["workloads"]] or \
            [[n["name"], "-", 0]]
    return _nodes_table(doc) + "\n" + table(["Host", "Workload type", "Number of workloads"],
                                            rows)


def _render_detailed(doc: dict) -> str:
    if not doc["nodes"]:
        return _nodes_table(doc)
    rows = [[n["name"], e["orchestrator"], e["workload_id"], e["endpoint_id"],
             ", ".join(e["ipv4_nets"] + e["ipv6_nets"]), e["mac"], e["state"]]
            for n in doc["nodes"] for e in n["endpoints"]]
    return _nodes_table(doc) + "\n" + table(["Host", "Workload type", "Workload ID",
                                             "Endpoint ID", "Addresses", "MAC", "State"], rows)
