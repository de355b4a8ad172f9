"""Inspect and repair address allocations.

Usage:
  calicoctl ipam show [--ip=<IP>] [-o <FORMAT>]
  calicoctl ipam check [-o <FORMAT>]
  calicoctl ipam release --ip=<IP> [--force]

Options:
  --ip=<IP>     The address to describe or release.
  --force       Release the address even though a live workload's endpoint
                lists it (another workload may then get it while the first
                still uses it).
  -o <FORMAT>   Output format: table (the default) or json (its shape is in
                docs/cli-json.md; `ipam check` exits 1 on problems either way).

`ipam show` reports usage per pool, per block and per host; with --ip it says
who owns that address. `ipam check` cross-checks blocks, host affinities and
handles, and endpoints against allocations both ways (an endpoint address that
is not allocated to it; an allocation whose endpoint or node is gone), lists
any inconsistency with what to run, and exits 1 if it found one. `ipam
release` frees one address whatever handle holds it: use it for addresses
that leaked. An address a live workload's endpoint lists is refused unless
--force.
"""

from __future__ import annotations

from calico.ipam.v1 import ipam_pb2
from cli import client, output, validate
from cli.errors import CliError
from cli.output import table


def run(args: dict) -> None:
    if args["show"]:
        show_ip(args, args["--ip"]) if args["--ip"] else show_usage(args)
    elif args["check"]:
        check(args)
    else:
        release(args["--ip"], args["--force"])


def show_usage(args: dict) -> None:
    usage = client.call(client.ipam(), "GetUsage", ipam_pb2.GetUsageRequest())
    # A pool's size is a string in the message (an IPv6 pool's overflows int64).
    doc = {"pools": [{"cidr": p.cidr, "size": int(p.size), "allocated": p.allocated,
                      "blocks": p.blocks} for p in usage.pools],
           "blocks": [{"cidr": b.cidr, "pool": b.pool, "host": b.host or None,
                       "allocated": b.allocated, "size": b.size} for b in usage.blocks],
           "hosts": [{"host": h.host, "blocks": h.blocks, "allocated": h.allocated}
                     for h in usage.hosts]}

    def render(doc):
        parts = [table(["Pool", "Addresses", "Allocated", "Blocks"],
                       [[p["cidr"], p["size"], p["allocated"], p["blocks"]]
                        for p in doc["pools"]])]
        if doc["blocks"]:
            parts.append(table(["Block", "Host", "Allocated"],
                               [[b["cidr"], b["host"] or "-", f"{b['allocated']}/{b['size']}"]
                                for b in doc["blocks"]]))
        if doc["hosts"]:
            parts.append(table(["Host", "Blocks", "Allocated"],
                               [[h["host"], h["blocks"], h["allocated"]] for h in doc["hosts"]]))
        return "\n".join(parts)
    output.emit(args, "IpamUsage", doc, render)


def show_ip(args: dict, ip_text: str) -> None:
    ip = validate.ip(ip_text)
    a = client.call(client.ipam(), "GetAllocation", ipam_pb2.GetAllocationRequest(ip=ip))
    doc = {"ip": ip, "pool": a.pool, "block": a.block or None,
           "block_host": a.block_host or None, "allocated": a.allocated,
           "handle_id": a.handle_id if a.allocated else None,
           "host": a.host if a.allocated else None,
           "attributes": dict(sorted(a.attributes.items())) if a.allocated else {}}

    def render(doc):
        where = f"IP {doc['ip']} is in pool {doc['pool']}"
        if doc["block"]:
            where += f", block {doc['block']}" + (
                f" (affine to host {doc['block_host']})" if doc["block_host"] else "")
        lines = [where + "."]
        if not doc["allocated"]:
            return "\n".join(lines + ["It is not allocated."])
        lines.append(f"It is allocated to handle {doc['handle_id']} for host {doc['host']}.")
        lines += [f"  {k}: {v}" for k, v in doc["attributes"].items()]
        return "\n".join(lines)
    output.emit(args, "IpAllocation", doc, render)


def check(args: dict) -> None:
    resp = client.call(client.ipam(), "CheckConsistency", ipam_pb2.CheckConsistencyRequest())
    doc = {"blocks_checked": resp.blocks_checked, "handles_checked": resp.handles_checked,
           "problems": [{"kind": p.kind, "detail": p.detail} for p in resp.problems]}

    def render(doc):
        summary = (f"Checked {doc['blocks_checked']} block(s) and {doc['handles_checked']} "
                   "handle(s)")
        if not doc["problems"]:
            return f"{summary}: no problems found."
        return "\n".join([f"{summary}: {len(doc['problems'])} problem(s) found."] +
                         [f"  [{p['kind']}] {p['detail']}" for p in doc["problems"]])
    output.emit(args, "IpamCheck", doc, render)
    if doc["problems"]:
        raise CliError("IPAM data is inconsistent; see the problems above.")


def release(ip_text: str, force: bool = False) -> None:
    ip = validate.ip(ip_text)
    resp = client.call(client.ipam(), "ReleaseIPs", ipam_pb2.ReleaseIPsRequest(ips=[ip],
                                                                              force=force))
    if not resp.released:
        raise CliError(f"IP {ip} is not assigned.")
    print(f"Released {ip}.")
