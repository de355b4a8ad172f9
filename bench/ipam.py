"""IPAM allocation benchmark (make bench).

Starts its own etcd and IPAM service process on free loopback ports, then
measures AutoAssign of one IPv4 address per call: with 1 client, and with 8
concurrent client processes spread over 4 hostnames. Prints allocations per
second (aggregate) and per-call latency p50/p99. Everything it starts is
stopped, and its data removed, before it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys


from common import ROOT, control_plane, percentile
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import rpc

PER_CLIENT = {1: 600, 8: 150}


def run_clients(addr: str, clients: int, run_id: str) -> dict:
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tools.ipam_load", addr, f"bench-host-{n % 4}",
         f"{run_id}-c{n}", str(PER_CLIENT[clients])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for n in range(clients)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:       # go: interpreter start-up is not what is measured
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    wall = max(r["finished"] for r in results) - min(r["started"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    total = sum(len(r["ips"]) for r in results)
    return {"clients": clients, "allocations": total, "wall": wall,
            "rate": total / wall, "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000,
            "retries": sum(r["retries"] for r in results),
            "unique": len({ip for r in results for ip in r["ips"]}) == total}


def main() -> int:
    with control_plane("ipam") as (_, _, _, addr, _):
        with rpc.channel(addr) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(
                ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.128.0.0/16")),
                timeout=10)
        # Warm up (first block claims, connections) so the runs measure steady state.
        run_clients(addr, 1, "warmup")
        rows = [run_clients(addr, 1, "single"), run_clients(addr, 8, "eight")]

    print("IPAM AutoAssign (1 IPv4 per call), real etcd, service in its own process")
    print(f"{'clients':>8} {'hosts':>6} {'allocs':>7} {'allocs/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'aborted':>8} {'unique':>7}")
    for r in rows:
        hosts = min(r["clients"], 4)
        print(f"{r['clients']:>8} {hosts:>6} {r['allocations']:>7} {r['rate']:>9.0f} "
              f"{r['p50']:>8.1f} {r['p99']:>8.1f} {r['retries']:>8} {str(r['unique']):>7}")
    aggregate = rows[-1]["rate"]
    print(f"aim: >= 500 allocations/s aggregate and p99 < 50 ms with 8 clients; "
          f"measured {aggregate:.0f}/s, p99 {rows[-1]['p99']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
