"""`make demo`: the main job, end to end, on this machine.

1. The control plane: etcd, the IPAM and BGP services (as `make up`).
2. IPAM: a pool defined with calicoctl; addresses allocated for two hosts over
   gRPC, as a scheduler would; `calicoctl pool show` and `ipam show`.
3. Two simulated hosts (network namespaces on an underlay) each run
   `calicoctl node`; workloads on both get IPv4 and IPv6 addresses with
   `calicoctl container add` and a profile (WEB or DB); BGP carries the
   routes; the connectivity matrix shows members reaching members and not
   others; `policy explain` says why; a rule update opens one TCP port; then
   `calicoctl status` and `shownodes`.

Safe to run again: it releases its own earlier allocations and removes its
simulated hosts when it ends. The control plane stays up; `make down` stops it.
"""

from __future__ import annotations

import json
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
              prefix=LAB_PREFIX, bgp=stack.unix_addr("bgp"), policy=stack.unix_addr("policy"))
    try:
        step("Starting two simulated hosts (network namespaces on one underlay), each "
             "running 'calicoctl node': policy agent, endpoint service, BIRD and its renderer")
        hosts = [lab.add_host(name, node=True) for name in ("host1", "host2")]
        host1, host2 = hosts
        for host in hosts:
            print(f"    {host.name}: {host.ip}, {host.ip6}; node state in {host.node_dir}")
        step("Two profiles: WEB and DB (members reach members; nothing else gets in)")
        for name in ("WEB", "DB"):
            show(host1, "profile", "add", name)
        step("Workloads (namespaces) get IPv4 and IPv6 addresses and a profile")
        plan = [(host1, "web1", "WEB"), (host2, "web2", "WEB"), (host1, "db1", "DB")]
        workloads = {}
        for host, name, profile in plan:
            w = Workload(host, name)
            show(host, "container", "add", w.ref, "auto")
            show(host, "container", w.ref, "ip", "add", "ipv6")
            show(host, "profile", profile, "member", "add", w.ref)
            w.refresh()
            workloads[name] = w
        show(host1, "container", "show")
        step("Waiting for the BGP sessions")
        for host in hosts:
            wait_established(host)
        web1, web2, db1 = workloads["web1"], workloads["web2"], workloads["db1"]
        step("Connectivity matrix (ping, IPv4 and IPv6): routed, no NAT, no encapsulation")
        for src in (web1, web2, db1):
            for dst in (web1, web2, db1):
                if src is dst:
                    continue
                for ip in dst.ips:
                    verdict = "reaches" if src.ping(ip) else "blocked"
                    print(f"    {src.name}@{src.host.name} -> {dst.name}@{dst.host.name} "
                          f"{ip:<36} {verdict}")
        for host in hosts:
            print(f"    {host.name} routes learned over BGP:")
            for line in (host.routes() + host.routes(v6=True)).splitlines():
                if "proto bird" in line and not line.startswith("blackhole"):
                    print(f"      {line}")
        step("Why is web1 -> db1 blocked?")
        show(host1, "policy", "explain", web1.ref, db1.ref)
        step("Open one port: DB accepts tcp 5432 from WEB (rule update, JSON on stdin)")
        rules = {"id": "DB", "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "src_tag": "WEB", "dst_ports": [5432]},
            {"action": "allow", "src_tag": "DB"}, {"action": "deny"}],
            "outbound_rules": [{"action": "allow"}]}
        print("[host1]$ calicoctl profile DB rule update < rules.json")
        result = host1.calicoctl("profile", "DB", "rule", "update", input=json.dumps(rules))
        print(result.stdout + result.stderr, end="")
        show(host1, "profile", "DB", "rule", "show")
        with db1.tcp_listen(5432), db1.tcp_listen(22):
            deadline = time.monotonic() + 10
            while not web2.tcp_connect(db1.ip, 5432) and time.monotonic() < deadline:
                time.sleep(0.1)
            for port in (5432, 22):
                verdict = "connects" if web2.tcp_connect(db1.ip, port) else "blocked"
                print(f"    web2@host2 -> db1@host1 tcp {port}: {verdict}")
        show(host1, "policy", "explain", web2.ip, db1.ref, "--protocol=tcp", "--port=5432")
        for host in hosts:
            step(f"calicoctl status on {host.name}")
            show(host, "status")
        step("calicoctl shownodes --detailed")
        show(host1, "shownodes", "--detailed")
        step("Removing the workloads, the profiles, and stopping the nodes")
        for w in workloads.values():
            show(w.host, "container", "remove", w.ref)
        for name in ("WEB", "DB"):
            show(host1, "profile", "remove", name)
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
