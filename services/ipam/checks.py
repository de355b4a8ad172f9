"""IPAM's consistency check (``calicoctl ipam check``): read-only.

Blocks, affinities and handles are checked against each other (an address a
handle does not record, a handle counting addresses its blocks lack, an
affinity without its block or a block without its confirmed affinity, a
block outside every pool). Then endpoints against allocations, both ways,
with services.ipam.owners saying who owns what: an address an active
endpoint lists must be allocated, and not to another endpoint
("endpoint-address-not-allocated": two workloads may hold it); an
allocation whose owner (endpoint record, node) is gone is reported
("allocation-without-owner"), as the garbage collector will release it.
Each problem says what to run.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from calicopy.datastore import keys
from calicopy.datastore.store import Store
from calicopy.model.ipam import CONFIRMED, Block, Handle, Pool, within
from services.ipam import owners


@dataclasses.dataclass
class Problem:
    kind: str
    subject: str
    detail: str


def check(store: Store, pools: list[Pool]) -> tuple[list[Problem], int, int]:
    """Every problem found, and how many blocks and handles were checked."""
    problems: list[Problem] = []
    view = owners.View.read(store)
    blocks = {keys.parse_block(kv.key): Block.from_json(kv.json())
              for kv in store.list(keys.blocks_prefix())}
    handles = {keys.parse_handle(kv.key): Handle.from_json(keys.parse_handle(kv.key), kv.json())
               for kv in store.list(keys.HANDLES)}
    affinities = {keys.parse_affinity(kv.key): kv.json()["state"]
                  for kv in store.list(keys.AFFINITIES)}
    allocations = {}

    for net, block in sorted(blocks.items(), key=lambda item: _order(item[0])):
        if not any(within(net, p.cidr) for p in pools):
            problems.append(Problem("block-outside-pools", str(net),
                                    f"Block {net} lies in no configured pool."))
        if block.host and affinities.get((block.host, net)) != CONFIRMED:
            problems.append(Problem(
                "broken-affinity", str(net),
                f"Block {net} is affine to host {block.host}, which holds no "
                "confirmed affinity for it."))
        counts = block.handle_counts()
        for o, alloc in sorted(block.allocations.items()):
            ip = block.ip(o)
            allocations[ip] = alloc
            handle = handles.get(alloc.handle_id)
            if handle is None or handle.blocks.get(str(net), 0) < counts[alloc.handle_id]:
                problems.append(Problem(
                    "address-without-handle", ip,
                    f"{ip} is allocated to handle {alloc.handle_id}, which "
                    f"does not record it; release it with 'calicoctl ipam release "
                    f"--ip={ip}'."))
            owner = view.owner(ip, alloc)
            if owner is not None and owner.gone:
                problems.append(Problem(
                    "allocation-without-owner", ip,
                    f"{ip} is allocated to handle {alloc.handle_id}, whose owner "
                    f"({owner.describe}) no longer exists; the garbage collector "
                    "releases it after its grace period, or run 'calicoctl ipam "
                    f"release --ip={ip}'."))
    for (host, net), state in sorted(affinities.items(),
                                      key=lambda i: (i[0][0], _order(i[0][1]))):
        block = blocks.get(net)
        if block is None or block.host != host:
            problems.append(Problem(
                "broken-affinity", str(net),
                f"Host {host} has a {state} affinity for block {net}, which "
                f"{'does not exist' if block is None else 'belongs to another host'}; "
                "the host's next allocation repairs it."))
    for handle_id, handle in sorted(handles.items()):
        for cidr, n in sorted(handle.blocks.items()):
            block = blocks.get(ipaddress.ip_network(cidr))
            have = block.handle_counts()[handle_id] if block else 0
            if have < n:
                problems.append(Problem(
                    "handle-without-address", handle_id,
                    f"Handle {handle_id} records {n} address(es) in block {cidr} "
                    f"but the block holds {have} for it."))
    problems += _endpoints(view, allocations)
    return problems, len(blocks), len(handles)


def _endpoints(view: owners.View, allocations: dict) -> list[Problem]:
    """Every address an active endpoint lists is allocated, to it: not
    free (another workload could get it), not another endpoint's."""
    problems = []
    for ep in sorted(view.active(), key=lambda e: (e.node, e.orchestrator, e.workload_id,
                                                    e.interface_name)):
        use = owners.EndpointUse.of(ep)
        for ip in ep.ips:
            alloc = allocations.get(ip)
            others = [o for o in view.users(ip) if o.endpoint_id != ep.endpoint_id]
            holder = alloc.attributes.get("endpoint") if alloc else None
            if alloc is None:
                why = "which is not allocated"
            elif holder and holder != ep.endpoint_id:
                why = (f"which is allocated to handle {alloc.handle_id} (endpoint "
                       f"{holder}): two workloads hold it")
            elif not holder and others:
                why = (f"which {owners.EndpointUse.of(others[0]).describe()} lists too: two "
                       "workloads hold it")
            else:
                continue
            problems.append(Problem(
                "endpoint-address-not-allocated", ip,
                f"Endpoint {ep.endpoint_id} ({ep.orchestrator} workload {ep.workload_id} "
                f"on node {ep.node}) uses {ip}, {why}; {use.remedy()}."))
    return problems


def _order(net):
    """Sort key for networks of mixed IP versions."""
    return net.version, net
