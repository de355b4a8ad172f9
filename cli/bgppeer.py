"""Route reflectors: when any is configured, nodes peer with them instead of
with each other.

Usage:
  calicoctl bgppeer rr (add|remove) <IP>
  calicoctl bgppeer rr show [--ipv4 | --ipv6] [-o <FORMAT>]

Options:
  --ipv4        Show only IPv4 route reflectors.
  --ipv6        Show only IPv6 route reflectors.
  -o <FORMAT>   Output format: table (the default) or json (its shape is in
                docs/cli-json.md).

A route reflector is an iBGP peer in the cluster's default AS (see
`calicoctl bgp default-node-as`); configure it to treat the nodes as clients.
"""

from __future__ import annotations

from calico.bgp.v1 import bgp_pb2
from cli import client, validate
from cli.bgp import show_peers


def run(args: dict) -> None:
    bgp = client.bgp()
    if args["show"]:
        show_peers(bgp, args, route_reflector=True, kind="RouteReflectorList",
                   title="IPv{v} Route Reflector")
        return
    ip = validate.peer_ip(args["<IP>"])
    if args["add"]:
        client.call(bgp, "AddPeer", bgp_pb2.AddPeerRequest(
            peer=bgp_pb2.Peer(ip=ip, route_reflector=True)))
        print(f"Added route reflector {ip}.")
    else:
        client.call(bgp, "RemovePeer", bgp_pb2.RemovePeerRequest(ip=ip, route_reflector=True))
        print(f"Removed route reflector {ip}.")
