"""Cluster-wide BGP settings and peers.

Usage:
  calicoctl bgp default-node-as [-o <FORMAT>]
  calicoctl bgp default-node-as <AS_NUM>
  calicoctl bgp node-mesh [-o <FORMAT>]
  calicoctl bgp node-mesh (on|off)
  calicoctl bgp peer add <PEER_IP> as <AS_NUM>
  calicoctl bgp peer remove <PEER_IP> [as <AS_NUM>]
  calicoctl bgp peer show [--ipv4 | --ipv6] [-o <FORMAT>]

Options:
  --ipv4        Show only IPv4 peers.
  --ipv6        Show only IPv6 peers.
  -o <FORMAT>   Output format: table (the default) or json (its shape is in
                docs/cli-json.md).

Without a value, `default-node-as` and `node-mesh` print the current setting.
Nodes use the default AS unless started with `calicoctl node --as`. With the
node mesh on (the default) and no route reflector configured, every node
peers with every other; global peers added here peer with every node.
"""

from __future__ import annotations

from calico.bgp.v1 import bgp_pb2
from cli import client, output, validate
from cli.output import table


def run(args: dict) -> None:
    bgp = client.bgp()
    if args["default-node-as"]:
        if args["<AS_NUM>"] is None:
            config = client.call(bgp, "GetBgpConfig", bgp_pb2.GetBgpConfigRequest()).config
            output.emit(args, "BgpDefaultNodeAs", {"default_as": config.default_as},
                        lambda doc: str(doc["default_as"]))
            return
        as_num = validate.as_number(args["<AS_NUM>"])
        client.call(bgp, "SetBgpConfig", bgp_pb2.SetBgpConfigRequest(default_as=as_num))
        print(f"Default node AS number set to {as_num}.")
    elif args["node-mesh"]:
        if not args["on"] and not args["off"]:
            config = client.call(bgp, "GetBgpConfig", bgp_pb2.GetBgpConfigRequest()).config
            output.emit(args, "BgpNodeMesh", {"node_mesh": config.node_mesh},
                        lambda doc: "on" if doc["node_mesh"] else "off")
            return
        client.call(bgp, "SetBgpConfig", bgp_pb2.SetBgpConfigRequest(node_mesh=args["on"]))
        print(f"Node-to-node mesh turned {'on' if args['on'] else 'off'}.")
    elif args["show"]:
        show_peers(bgp, args, route_reflector=False, kind="BgpPeerList",
                   title="Global IPv{v} BGP Peer")
    elif args["add"]:
        ip = validate.peer_ip(args["<PEER_IP>"])
        as_num = validate.as_number(args["<AS_NUM>"])
        client.call(bgp, "AddPeer", bgp_pb2.AddPeerRequest(peer=bgp_pb2.Peer(ip=ip,
                                                                             as_num=as_num)))
        print(f"Added global BGP peer {ip} (AS {as_num}).")
    else:
        ip = validate.peer_ip(args["<PEER_IP>"])
        client.call(bgp, "RemovePeer", bgp_pb2.RemovePeerRequest(ip=ip))
        print(f"Removed global BGP peer {ip}.")


def show_peers(bgp, args: dict, route_reflector: bool, kind: str, title: str) -> None:
    """The global peers or the route reflectors (``kind``), IPv4 then IPv6."""
    version = 4 if args["--ipv4"] else 6 if args["--ipv6"] else 0
    found = [p for p in client.call(bgp, "ListPeers", bgp_pb2.ListPeersRequest(
        ip_version=version)).peers if p.route_reflector == route_reflector]
    versions = [v for v in (4, 6) if version in (0, v)]
    doc = {"peers": peer_list(found, versions)}

    def render(doc):
        parts = []
        for v in versions:
            rows = [[p["ip"], p["as_num"] or "(default)"] for p in doc["peers"]
                    if p["ip_version"] == v]
            parts.append(table([title.format(v=v), "AS Num"], rows) if rows
                         else f"No IPv{v} BGP Peers defined.")
        return "\n".join(parts)
    output.emit(args, kind, doc, render)


def peer_list(peers, versions: list[int]) -> list[dict]:
    """Peers as the JSON documents list them: IPv4 first, as_num null for the
    cluster's default AS."""
    return [{"ip": p.ip, "ip_version": v, "as_num": p.as_num or None}
            for v in versions for p in peers if (":" in p.ip) == (v == 6)]
