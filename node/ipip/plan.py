"""Which of this node's routes go through IP-in-IP, from the cluster's records.

Pure: given the node, the other nodes' addresses, the pools and the block
records, and ``on_link(ip)`` (whether a host is on a subnet this node is
directly connected to), ``plan`` says

- whether this node needs its tunnel (an IPv4 pool uses IP-in-IP and the
  node has an IPv4 address), and from which pools its address may come;
- the routes through it: each other host's block of such a pool, and each
  address a host borrowed from someone else's block of one (a /32), to that
  host's address, when the pool's mode encapsulates towards it (``always``,
  or ``cross-subnet`` and the host is not on a connected subnet);
- the hosts IP-in-IP may come from: every other node's IPv4 address.

Everything else (same-subnet hosts of a cross-subnet pool, pools without
IP-in-IP) is routed natively by BIRD.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Callable

from calicopy.model.ipam import IPIP_ALWAYS, Pool, block_host


@dataclasses.dataclass
class Plan:
    tunnel: bool = False
    pools: list[str] = dataclasses.field(default_factory=list)      # IP-in-IP pools
    routes: dict[str, str] = dataclasses.field(default_factory=dict)  # CIDR -> host IP
    hosts: set[str] = dataclasses.field(default_factory=set)


def plan(node: str, nodes: dict[str, str], pools: list[Pool], blocks: list[dict],
         on_link: Callable[[str], bool]) -> Plan:
    """``nodes`` maps node names to IPv4 addresses; ``blocks`` are block
    records as stored (JSON)."""
    tunnelled = [p for p in pools if p.version == 4 and p.ipip]
    mine = nodes.get(node, "")
    if not tunnelled or not mine:
        return Plan()
    result = Plan(True, [str(p.cidr) for p in tunnelled],
                  hosts={ip for name, ip in nodes.items() if ip and name != node})
    decided: dict[tuple[str, str], bool] = {}

    def through_tunnel(host: str, pool: Pool) -> str | None:
        ip = nodes.get(host or "", "")
        if not host or host == node or not ip:
            return None
        if (ip, pool.ipip_mode) not in decided:
            decided[(ip, pool.ipip_mode)] = pool.ipip_mode == IPIP_ALWAYS or not on_link(ip)
        return ip if decided[(ip, pool.ipip_mode)] else None

    for record in blocks:
        cidr = ipaddress.ip_network(record["cidr"])
        pool = next((p for p in tunnelled if cidr.subnet_of(p.cidr)), None) \
            if cidr.version == 4 else None
        if pool is None:
            continue
        owner = block_host(record)
        via = through_tunnel(owner, pool)
        if via:
            result.routes[str(cidr)] = via
        for ordinal, alloc in record.get("allocations", {}).items():
            host = alloc.get("host", "")
            if host and host != owner:          # borrowed: its own /32
                via = through_tunnel(host, pool)
                if via:
                    result.routes[f"{cidr.network_address + int(ordinal)}/32"] = via
    return result
