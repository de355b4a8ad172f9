"""Every etcd key calico-py uses, and how to parse them back.

No other module builds key strings. Everything lives under one versioned
prefix, ``/calico/v1/``; an incompatible change of layout means a new prefix,
not an edit in place. Names that may contain '/' (hosts, handles) are
percent-encoded; CIDRs are written with '/' replaced by '-', as the original
tool did.

Hosts and their workloads' endpoints (as the original tool laid them out)::

    /calico/v1/host/<node>/workload/<orchestrator>/<workload>/endpoint/<id>
    /calico/v1/host/<node>/node                    {"name", "ipv4", "ipv6", "as_num"}
    /calico/v1/host/<node>/bgp_peer_v4/<ip>        a per-node BGP peer (v6 likewise)
    /calico/v1/host/<node>/bgp_status              sessions as the node sees them (leased)

Policy (as the original tool laid it out), and each node's progress::

    /calico/v1/policy/profile/<name>/tags          JSON list of tags
    /calico/v1/policy/profile/<name>/rules         {"inbound_rules": [...], "outbound_rules": [...]}
    /calico/v1/host/<node>/policy_applied          {"revision": N}: the agent's dataplane
                                                   reflects etcd as of revision N (written
                                                   when the node's endpoints change; leased)
    /calico/v1/config/endpoint_to_host_action      "drop" (when absent), "return" or "accept":
                                                   what nodes do with their workloads'
                                                   traffic to themselves

BGP settings::

    /calico/v1/config/bgp_as                       default AS number
    /calico/v1/config/bgp_node_mesh                {"enabled": bool}
    /calico/v1/config/bgp_peer_v4/<ip>             a global BGP peer (v6 likewise)

IPAM layout::

    /calico/v1/ipam/pools-rev                        bumped on every pool create/delete
    /calico/v1/ipam/pool/<v4|v6>/<cidr>              pool JSON
    /calico/v1/ipam/block/<v4|v6>/<cidr>             block JSON (allocations)
    /calico/v1/ipam/affinity/<host>/<v4|v6>/<cidr>   {"state": pending|confirmed}
    /calico/v1/ipam/handle/<handle id>               {"blocks": {cidr: count}}
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, unquote

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ROOT = "/calico/"
PREFIX = "/calico/v1/"
IPAM = PREFIX + "ipam/"
POOLS_REV = IPAM + "pools-rev"


def family(version: int) -> str:
    return f"v{version}"


def _cidr(net: Network) -> str:
    return str(net).replace("/", "-")


def _parse_cidr(text: str) -> Network:
    return ipaddress.ip_network(text.replace("-", "/"))


def _name(text: str) -> str:
    return quote(text, safe="")


# Pools ---------------------------------------------------------------------

def pools_prefix(version: int | None = None) -> str:
    return IPAM + "pool/" + (family(version) + "/" if version else "")


def pool(net: Network) -> str:
    return f"{pools_prefix(net.version)}{_cidr(net)}"


def parse_pool(key: str) -> Network:
    return _parse_cidr(key.rsplit("/", 1)[1])


# Blocks --------------------------------------------------------------------

def blocks_prefix(version: int | None = None) -> str:
    return IPAM + "block/" + (family(version) + "/" if version else "")


def block(net: Network) -> str:
    return f"{blocks_prefix(net.version)}{_cidr(net)}"


def parse_block(key: str) -> Network:
    return _parse_cidr(key.rsplit("/", 1)[1])


# Block affinities ------------------------------------------------------------

AFFINITIES = IPAM + "affinity/"


def host_affinities_prefix(host: str, version: int) -> str:
    return f"{AFFINITIES}{_name(host)}/{family(version)}/"


def affinity(host: str, net: Network) -> str:
    return host_affinities_prefix(host, net.version) + _cidr(net)


def parse_affinity(key: str) -> tuple[str, Network]:
    host, _, cidr = key[len(AFFINITIES):].split("/")
    return unquote(host), _parse_cidr(cidr)


# Handles -------------------------------------------------------------------

HANDLES = IPAM + "handle/"


def handle(handle_id: str) -> str:
    return HANDLES + _name(handle_id)


def handles_prefix(start: str) -> str:
    """The keys of every handle whose id starts with ``start``."""
    return HANDLES + _name(start)


def parse_handle(key: str) -> str:
    return unquote(key[len(HANDLES):])


# Endpoints -----------------------------------------------------------------

HOSTS = PREFIX + "host/"


def node_endpoints_prefix(node: str) -> str:
    return f"{HOSTS}{_name(node)}/workload/"


def workload_prefix(node: str, orchestrator: str, workload_id: str) -> str:
    return f"{node_endpoints_prefix(node)}{_name(orchestrator)}/{_name(workload_id)}/endpoint/"


def endpoint(node: str, orchestrator: str, workload_id: str, endpoint_id: str) -> str:
    return workload_prefix(node, orchestrator, workload_id) + endpoint_id


def is_endpoint(key: str) -> bool:
    parts = key[len(HOSTS):].split("/")
    return key.startswith(HOSTS) and len(parts) == 6 and parts[1] == "workload" \
        and parts[4] == "endpoint"


def host(node: str) -> str:
    """Everything of one node (removed when the node is)."""
    return f"{HOSTS}{_name(node)}/"


def parse_host(key: str) -> str:
    return unquote(key[len(HOSTS):].split("/")[0])


# Nodes and BGP -----------------------------------------------------------------

CONFIG = PREFIX + "config/"
BGP_AS = CONFIG + "bgp_as"
BGP_NODE_MESH = CONFIG + "bgp_node_mesh"


def node(name: str) -> str:
    return host(name) + "node"


def is_node(key: str) -> bool:
    return key.startswith(HOSTS) and key.endswith("/node") and key.count("/") == 5


def bgp_status(name: str) -> str:
    return host(name) + "bgp_status"


def is_bgp_status(key: str) -> bool:
    return key.startswith(HOSTS) and key.endswith("/bgp_status") and key.count("/") == 5


def peers_prefix(version: int, node_name: str | None = None) -> str:
    base = host(node_name) if node_name else CONFIG
    return f"{base}bgp_peer_{family(version)}/"


def peer(ip, node_name: str | None = None) -> str:
    return peers_prefix(ip.version, node_name) + str(ip)


def parse_peer(key: str) -> tuple[str | None, str]:
    """(node or None for a global peer, peer address)."""
    node_name = parse_host(key) if key.startswith(HOSTS) else None
    return node_name, key.rsplit("/", 1)[1]


# Policy ------------------------------------------------------------------------

PROFILES = PREFIX + "policy/profile/"
ENDPOINT_TO_HOST_ACTION = CONFIG + "endpoint_to_host_action"


def profile_tags(name: str) -> str:
    return f"{PROFILES}{name}/tags"


def profile_rules(name: str) -> str:
    return f"{PROFILES}{name}/rules"


def parse_profile(key: str) -> tuple[str, str]:
    """(profile name, "tags" or "rules")."""
    name, _, part = key[len(PROFILES):].partition("/")
    return name, part


def policy_applied(node_name: str) -> str:
    return host(node_name) + "policy_applied"


# Questions for the nodes' policy agents (live drops, rule counters): the
# administrator writes them, under a lease, outside /calico/v1/ so that no
# configuration watcher wakes; each node answers under its own prefix.
QUERIES = ROOT + "queries/"


def query(query_id: str) -> str:
    return QUERIES + _name(query_id)


def answer(node_name: str, query_id: str) -> str:
    return host(node_name) + "answers/" + _name(query_id)


def is_report(key: str) -> bool:
    """Keys nodes write about themselves (status, progress, answers):
    watchers that react to configuration changes skip them."""
    return key.endswith(("/bgp_status", "/policy_applied")) or "/answers/" in key


def changes_configuration(watch_response) -> bool:
    """For watch callbacks: False only when every event is a node's own
    report; a failed watch (no events) counts as a change, to look again."""
    return touches(watch_response, lambda key: True)


def touches(watch_response, relevant) -> bool:
    """For watch callbacks of an owner that reads only some records: whether
    any event's key is one ``relevant(key)`` accepts (and not a report); a
    failed watch (no events) counts, to look again."""
    events = getattr(watch_response, "events", None)
    if events is None:
        return True
    for e in events:
        key = e.key.decode()
        if relevant(key) and not is_report(key):
            return True
    return False
