"""`make demo`: the main job, end to end, on this machine.

1. The control plane: etcd, the IPAM and BGP services (as `make up`).
2. IPAM: a pool defined with calicoctl; addresses allocated for two hosts over
   gRPC, as a scheduler would; `calicoctl pool show` and `ipam show`.
3. Two simulated hosts (network namespaces on an underlay) each run
   `calicoctl node`; workloads on both get IPv4 and IPv6 addresses with
   `calicoctl container add`, BGP carries the routes, and every workload pings
   every other across hosts; then `calicoctl status` and `shownodes`.

Safe to run again: it releases its own earlier allocations and removes its
simulated hosts when it ends. The control plane stays up; `make down` stops it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import grpc

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import config
from tools import stack
from tools.lab import Lab, Workload

POOL, POOL6 = "10.20.0.0/16", "fd80:24e2:f998:72d6::/64"
HOSTS = {"host-a": 3, "host-b": 2}
LAB_PREFIX = "demo"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def calicoctl(*args: str) -> None:
    print(f"$ calicoctl {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "cli.calicoctl", *args], check=True)


def show(host, *args: str) -> str:
    print(f"[{host.name}]$ calicoctl {' '.join(args)}", flush=True)
    result = host.calicoctl(*args)
    print(result.stdout + result.stderr, end="", flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"calicoctl {' '.join(args)} failed")
    return result.stdout


def ipam_story() -> None:
    step(f"Defining the pools {POOL} and {POOL6}")
    calicoctl("pool", "add", POOL, "--nat-outgoing")
    calicoctl("pool", "add", POOL6)
    with grpc.insecure_channel(config.IPAM_ADDR.resolve()) as ch:
        ipam = ipam_pb2_grpc.IpamServiceStub(ch)
        for name, count in HOSTS.items():
            step(f"Allocating {count} addresses for {name} over gRPC (AutoAssign)")
            for n in range(count):
                handle = f"demo.{name}.{n}"
                ipam.ReleaseByHandle(ipam_pb2.ReleaseByHandleRequest(handle_id=handle),
                                     timeout=10)
                got = ipam.AutoAssign(ipam_pb2.AutoAssignRequest(
                    num_ipv4=1, handle_id=handle, hostname=name,
                    attributes={"demo": "ipam"}), timeout=10)
                print(f"    {handle:<16} -> {got.ipv4[0]}")
    step("The pools")
    calicoctl("pool", "show")
    step("Usage per pool, block and host: each host allocates from its own block")
    calicoctl("ipam", "show")


def workload_story() -> None:
    Lab.remove_leftovers(LAB_PREFIX)
    lab = Lab(stack.STATE / "demo", stack.etcd_unix(), stack.unix_addr("ipam"),
              prefix=LAB_PREFIX, bgp=stack.unix_addr("bgp"))
    try:
        step("Starting two simulated hosts (network namespaces on one underlay), each "
             "running 'calicoctl node': endpoint service, BIRD and its renderer")
        hosts = [lab.add_host(name, node=True) for name in ("host1", "host2")]
        for host in hosts:
            print(f"    {host.name}: {host.ip}, {host.ip6}; node state in {host.node_dir}")
        step("Giving workloads (namespaces) Calico addresses: two on host1, one on host2")
        workloads = []
        for host, name in ((hosts[0], "w1"), (hosts[0], "w2"), (hosts[1], "w3")):
            w = Workload(host, name)
            show(host, "container", "add", w.ref, "auto")
            show(host, "container", w.ref, "ip", "add", "ipv6")
            w.refresh()
            workloads.append(w)
        show(hosts[0], "container", "show")
        step("Waiting for the BGP sessions")
        for host in hosts:
            wait_established(host)
        step("Connectivity: routed addresses, no bridge, no NAT, no encapsulation")
        w1, w2, w3 = workloads
        for src, dst in ((w1, w2), (w2, w1), (w1, w3), (w3, w1), (w3, w2)):
            for ip in dst.ips:
                src.assert_can_ping(ip)
                print(f"    {src.name}@{src.host.name} -> {dst.name}@{dst.host.name} "
                      f"{ip:<28} ping ok")
        w1.assert_can_ping(hosts[0].ip)
        print(f"    w1@host1 -> host1 {hosts[0].ip:<28} ping ok")
        for host in hosts:
            print(f"    {host.name} routes learned over BGP:")
            for line in (host.routes() + host.routes(v6=True)).splitlines():
                if "proto bird" in line and not line.startswith("blackhole"):
                    print(f"      {line}")
        for host in hosts:
            step(f"calicoctl status on {host.name}")
            show(host, "status")
        step("calicoctl shownodes --detailed")
        show(hosts[0], "shownodes", "--detailed")
        step("Removing the workloads and stopping the nodes")
        for w in workloads:
            show(w.host, "container", "remove", w.ref)
        for host in hosts:
            show(host, "node", "stop")
        calicoctl("ipam", "check")
    finally:
        lab.close()


def wait_established(host, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "Established" not in host.calicoctl("status").stdout:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.name} has no established BGP session")
        time.sleep(0.5)
    print(f"    {host.name}: established")


def main() -> int:
    step("Starting etcd and the cluster services (make up)")
    stack.up()
    ipam_story()
    workload_story()
    print("\nThe control plane is still running; 'make down' stops it.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (subprocess.CalledProcessError, grpc.RpcError, RuntimeError, AssertionError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
