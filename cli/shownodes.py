"""The nodes of the cluster and what runs on them.

Usage:
  calicoctl shownodes [--detailed]

Options:
  --detailed   List every endpoint: workload, endpoint id, addresses, MAC, state.
"""

from __future__ import annotations

from collections import Counter

from calico.bgp.v1 import bgp_pb2
from cli import client
from cli.output import table


def run(args: dict) -> None:
    nodes = client.call(client.bgp(), "ListNodes", bgp_pb2.ListNodesRequest(
        with_endpoints=True)).nodes
    if not nodes:
        print("No nodes are registered; start one with 'calicoctl node --ip=<IP>'.")
        return
    print(table(["Host", "IPv4", "IPv6", "AS"],
                [[n.node.name, n.node.ipv4, n.node.ipv6 or "-", n.node.as_num or "(default)"]
                 for n in nodes]))
    if args["--detailed"]:
        rows = [[n.node.name, e.orchestrator, e.workload_id, e.endpoint_id,
                 ", ".join(list(e.ipv4_nets) + list(e.ipv6_nets)), e.mac, e.state]
                for n in nodes for e in n.endpoints]
        print(table(["Host", "Workload type", "Workload ID", "Endpoint ID", "Addresses",
                     "MAC", "State"], rows))
        return
    rows = []
    for n in nodes:
        counts = Counter(e.orchestrator for e in n.endpoints)
        rows += [[n.node.name, kind, count] for kind, count in sorted(counts.items())] or \
            [[n.node.name, "-", 0]]
    print(table(["Host", "Workload type", "Number of workloads"], rows))
