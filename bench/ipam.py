"""IPAM allocation benchmark (make bench).

Starts its own etcd and IPAM service process on free loopback ports, then
measures AutoAssign of one IPv4 address per call: with 1 client, and with 8
concurrent client processes spread over 4 hostnames. Prints allocations per
second (aggregate) and per-call latency p50/p99, with TLS and authorisation on
(mutual TLS to the service, TLS and etcd's authentication between it and
etcd: production) and, in the same run, in plaintext, and the ratio. Each
client keeps one channel, so a handshake is paid once, not per call.
Everything it starts is stopped, and its data removed, before it exits.
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


def measure(tls: bool) -> list[dict]:
    with control_plane("ipam", tls=tls) as plane:
        with rpc.channel(plane.ipam_tcp) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(
                ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.128.0.0/16")),
                timeout=10)
        # Warm up (first block claims, connections) so the runs measure steady state.
        run_clients(plane.ipam_tcp, 1, "warmup")
        return [run_clients(plane.ipam_tcp, 1, "single"),
                run_clients(plane.ipam_tcp, 8, "eight")]


def main() -> int:
    runs = {"TLS": measure(True), "plaintext": measure(False)}

    print("IPAM AutoAssign (1 IPv4 per call), real etcd, service in its own process")
    print(f"{'security':<10} {'clients':>8} {'hosts':>6} {'allocs':>7} {'allocs/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'aborted':>8} {'unique':>7}")
    for mode, rows in runs.items():
        for r in rows:
            hosts = min(r["clients"], 4)
            print(f"{mode:<10} {r['clients']:>8} {hosts:>6} {r['allocations']:>7} "
                  f"{r['rate']:>9.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['retries']:>8} "
                  f"{str(r['unique']):>7}")
    for i, clients in enumerate((1, 8)):
        ratio = runs["TLS"][i]["rate"] / runs["plaintext"][i]["rate"]
        print(f"TLS/plaintext allocations/s with {clients} client(s): {ratio:.2f} "
              f"(aim >= 0.8)")
    tls = runs["TLS"][-1]
    print(f"aim: >= 500 allocations/s aggregate and p99 < 50 ms with 8 clients; "
          f"measured (TLS) {tls['rate']:.0f}/s, p99 {tls['p99']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
