"""Inspect and repair address allocations.

Usage:
  calicoctl ipam show [--ip=<IP>]
  calicoctl ipam check
  calicoctl ipam release --ip=<IP> [--force]

Options:
  --ip=<IP>   The address to describe or release.
  --force     Release the address even though a live workload's endpoint
              lists it (another workload may then get it while the first
              still uses it).

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
from cli import client, validate
from cli.errors import CliError
from cli.output import table


def run(args: dict) -> None:
    if args["show"]:
        show_ip(args["--ip"]) if args["--ip"] else show_usage()
    elif args["check"]:
        check()
    else:
        release(args["--ip"], args["--force"])


def show_usage() -> None:
    usage = client.call(client.ipam(), "GetUsage", ipam_pb2.GetUsageRequest())
    print(table(["Pool", "Addresses", "Allocated", "Blocks"],
                [[p.cidr, p.size, p.allocated, p.blocks] for p in usage.pools]))
    if usage.blocks:
        print(table(["Block", "Host", "Allocated"],
                    [[b.cidr, b.host or "-", f"{b.allocated}/{b.size}"] for b in usage.blocks]))
    if usage.hosts:
        print(table(["Host", "Blocks", "Allocated"],
                    [[h.host, h.blocks, h.allocated] for h in usage.hosts]))


def show_ip(ip_text: str) -> None:
    ip = validate.ip(ip_text)
    a = client.call(client.ipam(), "GetAllocation", ipam_pb2.GetAllocationRequest(ip=ip))
    where = f"IP {ip} is in pool {a.pool}"
    if a.block:
        where += f", block {a.block}" + (f" (affine to host {a.block_host})"
                                         if a.block_host else "")
    print(where + ".")
    if not a.allocated:
        print("It is not allocated.")
        return
    print(f"It is allocated to handle {a.handle_id} for host {a.host}.")
    for k, v in sorted(a.attributes.items()):
        print(f"  {k}: {v}")


def check() -> None:
    resp = client.call(client.ipam(), "CheckConsistency", ipam_pb2.CheckConsistencyRequest())
    summary = f"Checked {resp.blocks_checked} block(s) and {resp.handles_checked} handle(s)"
    if not resp.problems:
        print(f"{summary}: no problems found.")
        return
    print(f"{summary}: {len(resp.problems)} problem(s) found.")
    for p in resp.problems:
        print(f"  [{p.kind}] {p.detail}")
    raise CliError("IPAM data is inconsistent; see the problems above.")


def release(ip_text: str, force: bool = False) -> None:
    ip = validate.ip(ip_text)
    resp = client.call(client.ipam(), "ReleaseIPs", ipam_pb2.ReleaseIPsRequest(ips=[ip],
                                                                              force=force))
    if not resp.released:
        raise CliError(f"IP {ip} is not assigned.")
    print(f"Released {ip}.")
