"""Manage the IP pools that workload addresses come from.

Usage:
  calicoctl pool add <CIDR> [--nat-outgoing] [--ipip=<MODE>] [--block-size=<N>]
  calicoctl pool remove <CIDR> [--force]
  calicoctl pool show [--ipv4 | --ipv6] [-o <FORMAT>]

Options:
  --nat-outgoing      Masquerade traffic from the pool to destinations outside
                      all pools.
  --ipip=<MODE>       Reach the pool's addresses on other hosts through IP-in-IP
                      (tunl0; IPv4 pools only): always, cross-subnet (only
                      towards hosts on another subnet) or never. `--ipip`
                      alone means always, as it always did.
  --block-size=<N>    Prefix length of the pool's allocation blocks: IPv4 20-32
                      (default 26), IPv6 116-128 (default 122).
  --force             Remove the pool even though addresses are allocated from
                      it; those allocations are dropped, and the endpoints that
                      still use them are named (remove their workloads).
  --ipv4              Show only IPv4 pools.
  --ipv6              Show only IPv6 pools.
  -o <FORMAT>         Output format: table (the default) or json (its shape is
                      in docs/cli-json.md).

`pool add` of an existing pool is not an error: its flags are set to the ones
given (so a pool's IP-in-IP mode is changed by adding it again with another
mode, and running nodes follow at once). A CIDR with host bits set is
normalised (10.0.0.1/8 -> 10.0.0.0/8) and a bare address becomes a /32 (or
/128) pool.
"""

from __future__ import annotations

import sys

import grpc

from calico.ipam.v1 import ipam_pb2
from cli import client, output, validate
from cli.errors import CliError
from cli.output import table

IPIP_MODES = {"always": ipam_pb2.IPIP_MODE_ALWAYS,
              "cross-subnet": ipam_pb2.IPIP_MODE_CROSS_SUBNET,
              "never": ipam_pb2.IPIP_MODE_NEVER}
MODE_NAMES = {v: k for k, v in IPIP_MODES.items()}
VERSIONS = {ipam_pb2.IP_VERSION_V4: 4, ipam_pb2.IP_VERSION_V6: 6}


def normalise_argv(argv: list[str]) -> list[str]:
    """``--ipip`` without a value is ``--ipip=always`` (docopt has no
    optional option values)."""
    return ["--ipip=always" if a == "--ipip" else a for a in argv]


def _mode(pool) -> str:
    return MODE_NAMES.get(pool.ipip_mode, "always" if pool.ipip else "never")


def run(args: dict) -> None:
    if args["add"]:
        add(args["<CIDR>"], args["--nat-outgoing"], args["--ipip"] or "never",
            args["--block-size"])
    elif args["remove"]:
        remove(args["<CIDR>"], args["--force"])
    else:
        show(args, 4 if args["--ipv4"] else 6 if args["--ipv6"] else None)


def _options(pool: dict) -> str:
    """The Options column: the pool's flags that are on."""
    flags = [f for f, on in (("nat-outgoing", pool["nat_outgoing"]),
                             (f"ipip={pool['ipip_mode']}", pool["ipip_mode"] != "never"),
                             ("disabled", pool["disabled"])) if on]
    return ",".join(flags)


def _flags(pool) -> str:
    return _options({"nat_outgoing": pool.nat_outgoing, "ipip_mode": _mode(pool),
                     "disabled": pool.disabled})


def add(cidr_text: str, nat: bool, ipip: str, block_size: str | None) -> None:
    cidr, normalised = validate.cidr(cidr_text)
    if ipip not in IPIP_MODES:
        raise CliError(f"Invalid IP-in-IP mode '{ipip}': use always, cross-subnet or never.")
    if ipip != "never" and ":" in cidr:
        raise CliError("IP-in-IP is IPv4 only: an IPv6 pool cannot use --ipip.")
    size = 0
    if block_size is not None:
        if not block_size.isdigit():
            raise CliError(f"Invalid block size '{block_size}': give a prefix length "
                           "such as 26.")
        size = int(block_size)
    ipam = client.ipam()
    if normalised:
        print(f"Normalised {cidr_text} to {cidr} (host bits cleared).")
    mode = IPIP_MODES[ipip]
    request = ipam_pb2.Pool(cidr=cidr, block_size=size, nat_outgoing=nat, ipip_mode=mode)
    try:
        pool = ipam.call("CreatePool", ipam_pb2.CreatePoolRequest(pool=request)).pool
        print(f"Added pool {pool.cidr} (block size /{pool.block_size}).")
        return
    except client.RpcFailure as exc:
        if exc.code != grpc.StatusCode.ALREADY_EXISTS:
            raise CliError(str(exc)) from None
    existing = next(p for p in ipam.call("ListPools", ipam_pb2.ListPoolsRequest()).pools
                    if p.cidr == cidr)
    if size and size != existing.block_size:
        raise CliError(f"Pool {cidr} already exists with block size /{existing.block_size}; "
                       "remove it first to change the block size.")
    if (existing.nat_outgoing, _mode(existing)) == (nat, ipip):
        print(f"Pool {cidr} already exists.")
        return
    pool = ipam.call("UpdatePool", ipam_pb2.UpdatePoolRequest(
        cidr=cidr, nat_outgoing=nat, ipip_mode=mode)).pool
    print(f"Updated pool {cidr}: options now '{_flags(pool) or 'none'}'.")


def remove(cidr_text: str, force: bool) -> None:
    cidr, _ = validate.cidr(cidr_text)
    try:
        resp = client.ipam().call("DeletePool", ipam_pb2.DeletePoolRequest(
            cidr=cidr, force=force))
    except client.RpcFailure as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            raise CliError(f"{cidr} is not a configured pool.") from None
        if exc.code == grpc.StatusCode.FAILED_PRECONDITION:
            raise CliError(f"{exc} Use 'calicoctl pool remove {cidr} --force'.") from None
        raise CliError(str(exc)) from None
    dropped = f" and released {resp.released} allocated address(es)" if resp.released else ""
    print(f"Removed pool {cidr}{dropped}.")
    for ep in resp.endpoints:
        print(f"WARNING: endpoint {ep.endpoint_id} ({ep.orchestrator} workload {ep.workload_id} "
              f"on node {ep.node}) still uses {', '.join(ep.ips)}, which lies in no pool now: "
              "remove its workload.", file=sys.stderr)


def show(args: dict, version: int | None) -> None:
    enum = {4: ipam_pb2.IP_VERSION_V4, 6: ipam_pb2.IP_VERSION_V6}.get(
        version, ipam_pb2.IP_VERSION_UNSPECIFIED)
    pools = client.ipam().call("ListPools", ipam_pb2.ListPoolsRequest(ip_version=enum)).pools
    versions = [v for v in (4, 6) if version in (None, v)]
    shown = [{"cidr": p.cidr, "ip_version": v, "block_size": p.block_size,
              "nat_outgoing": p.nat_outgoing, "ipip_mode": _mode(p), "disabled": p.disabled}
             for v in versions for p in pools if VERSIONS.get(p.ip_version) == v]

    def render(doc):
        return "\n".join(table([f"IPv{v} CIDR", "Block size", "Options", "IP-in-IP"],
                               [[p["cidr"], f"/{p['block_size']}", _options(p), p["ipip_mode"]]
                                for p in doc["pools"] if p["ip_version"] == v])
                         for v in versions)
    output.emit(args, "PoolList", {"pools": shown}, render)
