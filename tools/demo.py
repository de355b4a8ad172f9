"""`make demo`: the main job, end to end, on this machine.

1. The control plane: etcd and the IPAM service (as `make up`).
2. IPAM: a pool defined with calicoctl; addresses allocated for two hosts over
   gRPC, as a scheduler would; `calicoctl pool show` and `ipam show`.
3. A simulated host (a network namespace on an underlay, running its own
   endpoint service) gets two workloads with `calicoctl container add`; they
   ping each other and their host.

Safe to run again: it releases its own earlier allocations and removes its
simulated host when it ends. The control plane stays up; `make down` stops it.
"""

from __future__ import annotations

import subprocess
import sys

import grpc

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import config
from tools import stack
from tools.lab import Lab, Workload

POOL = "10.20.0.0/16"
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
    step(f"Defining the pool {POOL}")
    calicoctl("pool", "add", POOL, "--nat-outgoing")
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
    lab = Lab(stack.STATE / "demo", stack.etcd_unix(), stack.unix_addr("ipam"), prefix=LAB_PREFIX)
    try:
        step("Starting a simulated host: namespace demo-host1 on an underlay, "
             "running its own endpoint service")
        host = lab.add_host("host1")
        print(f"    host1 underlay address {host.ip}; endpoint service on {host.endpoint_addr}")
        step("Giving two workloads (namespaces) Calico addresses on host1")
        workloads = []
        for name in ("w1", "w2"):
            w = Workload(host, name)
            show(host, "container", "add", w.ref, "auto")
            w.refresh()
            workloads.append(w)
        show(host, "container", "show")
        step("Connectivity: routed /32s through the host, no bridge, no NAT")
        w1, w2 = workloads
        for src, dst, label in ((w1, w2.ip, "w2"), (w2, w1.ip, "w1"), (w1, host.ip, "host1")):
            src.assert_can_ping(dst)
            print(f"    {src.name} ({src.ip}) -> {label} ({dst}): ping ok")
        if host.ns.run("ping", "-c1", "-W1", w1.ip, check=False).returncode != 0:
            raise RuntimeError(f"host1 cannot ping {w1.ip}")
        print(f"    host1 ({host.ip}) -> w1 ({w1.ip}): ping ok")
        print("    host1 routes to its workloads:")
        for line in host.routes().splitlines():
            if "cali" in line:
                print(f"      {line}")
        step("Removing the workloads: interfaces, routes and addresses go")
        for w in workloads:
            show(host, "container", "remove", w.ref)
        calicoctl("ipam", "check")
    finally:
        lab.close()


def main() -> int:
    step("Starting etcd and the IPAM service (make up)")
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
