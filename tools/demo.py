"""`make demo`: the main job, end to end, on this machine.

Brings up the local control plane (etcd and the IPAM service, as `make up`),
defines a pool with calicoctl, allocates addresses for two hosts over gRPC as
a scheduler would, and shows the result with `calicoctl pool show` and
`calicoctl ipam show`. Safe to run again: it releases its own earlier
allocations first. `make down` stops the stack.
"""

from __future__ import annotations

import subprocess
import sys

import grpc

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import config
from tools import stack

POOL = "10.20.0.0/16"
HOSTS = {"host-a": 3, "host-b": 2}


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def calicoctl(*args: str) -> None:
    print(f"$ calicoctl {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "cli.calicoctl", *args], check=True)


def main() -> int:
    step("Starting etcd and the IPAM service (make up)")
    stack.up()

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
                    attributes={"demo": "step-1"}), timeout=10)
                print(f"    {handle:<16} -> {got.ipv4[0]}")

    step("The pools")
    calicoctl("pool", "show")
    step("Usage per pool, block and host: each host allocates from its own block")
    calicoctl("ipam", "show")
    step("Consistency check")
    calicoctl("ipam", "check")
    print("\nThe control plane is still running; 'make down' stops it.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (subprocess.CalledProcessError, grpc.RpcError, RuntimeError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
