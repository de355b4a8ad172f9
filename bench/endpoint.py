"""Endpoint benchmark (make bench): how soon a new workload is reachable.

One simulated host (a namespace running the endpoint service) over a private
etcd and IPAM service. For each workload: the time from the AddEndpoint call
to the first echo reply the host gets from the workload's new address, over
100 sequential adds and over 20 concurrent adds; and the time a
RemoveEndpoint call takes. The sequential adds run twice, with TLS and
authorisation on everywhere (production) and in plaintext, for the ratio. Probing uses a raw ICMP socket in the host's
namespace every few milliseconds, so process start-up is not measured.
Everything it creates is removed before it exits.
"""

from __future__ import annotations

import sys
import threading
import time


from common import control_plane, percentile
from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import rpc
from tools.icmp import Pinger
from tools.lab import Lab, Namespace

SEQUENTIAL, CONCURRENT = 100, 20


def add_and_reach(stub, pinger, ns: Namespace) -> tuple[float, float, str]:
    start = time.perf_counter()
    ep = stub.AddEndpoint(endpoint_pb2.AddEndpointRequest(
        orchestrator="bench", workload_id=ns.name, netns_path=ns.path, auto_ipv4=1),
        timeout=30).endpoint
    returned = time.perf_counter() - start
    ip = ep.ipv4_nets[0].split("/")[0]
    pinger.wait_reachable(ip)
    return returned, time.perf_counter() - start, ns.name


def remove(stub, workload_id: str) -> float:
    start = time.perf_counter()
    stub.RemoveEndpoint(endpoint_pb2.RemoveEndpointRequest(
        orchestrator="bench", workload_id=workload_id), timeout=30)
    return time.perf_counter() - start


def row(name, values):
    ms = [v * 1000 for v in values]
    return f"{name:<34} {len(ms):>5} {percentile(ms, 50):>8.1f} {percentile(ms, 99):>8.1f}"


def measure(tls: bool, concurrent: bool) -> dict:
    with control_plane("endpoint", tls=tls) as plane:
        tmp = plane.tmp
        with rpc.channel(plane.ipam_tcp) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr="10.140.0.0/16")), timeout=10)
        Lab.remove_leftovers("benchep")
        lab = Lab(tmp / "lab", plane.etcd_unix, plane.pki, prefix="benchep")
        try:
            host = lab.add_host("bench-host")
            names = [Namespace(lab, f"benchep-s{i}") for i in range(SEQUENTIAL)]
            parallel = [Namespace(lab, f"benchep-c{i}") for i in range(CONCURRENT)]
            channel = rpc.channel(host.endpoint_addr)
            stub = endpoint_pb2_grpc.EndpointServiceStub(channel)
            pinger = Pinger(host.ns.path)

            add_and_reach(stub, pinger, Namespace(lab, "benchep-warm"))   # warm-up
            sequential = [add_and_reach(stub, pinger, ns) for ns in names]
            removals = [remove(stub, name) for _, _, name in sequential]

            results, errors = [], []

            def one(ns):
                p = Pinger(host.ns.path)
                try:
                    results.append(add_and_reach(stub, p, ns))
                except Exception as exc:   # reported below
                    errors.append(exc)
                finally:
                    p.close()
            threads = [threading.Thread(target=one, args=(ns,))
                       for ns in (parallel if concurrent else [])]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            pinger.close()
            channel.close()
        finally:
            lab.close()
    return {"sequential": sequential, "removals": removals, "concurrent": results}


def main() -> int:
    tls = measure(True, concurrent=True)
    plain = measure(False, concurrent=False)
    print("Endpoint add -> first echo reply from the host, one simulated host, real kernel")
    print(f"{'':<34} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
    print(row("sequential: add call returns", [r[0] for r in tls["sequential"]]))
    print(row("sequential: add -> reachable", [r[1] for r in tls["sequential"]]))
    print(row(f"{CONCURRENT} concurrent: add -> reachable", [r[1] for r in tls["concurrent"]]))
    print(row("remove call", tls["removals"]))
    print(row("plaintext: add call returns", [r[0] for r in plain["sequential"]]))
    with_tls = percentile([r[0] for r in tls["sequential"]], 50)
    without = percentile([r[0] for r in plain["sequential"]], 50)
    print(f"add call p50, plaintext/TLS (speed with TLS relative to without): "
          f"{without / with_tls:.2f} (aim >= 0.8)")
    single = percentile([r[1] for r in tls["sequential"]], 50)
    together = percentile([r[1] for r in tls["concurrent"]], 50)
    print(f"{CONCURRENT} concurrent / sequential add -> reachable p50: {together / single:.2f} "
          f"(aim <= 3)")
    print("aim: sequential add -> reachable p50 < 50 ms, p99 < 150 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
