"""`make demo`: the main job, end to end, on this machine: Calico on Docker.

1. The control plane: etcd, two replicas of each of the IPAM, policy and BGP
   services (as `make up`; `ETCD_MEMBERS=3 make demo` for a 3-member etcd),
   with mutual TLS on every TCP port and etcd's authentication on; clients
   are given every member and replica and fail over between them.
2. IPAM: pools defined with calicoctl; addresses allocated for two hosts over
   gRPC, as a scheduler would; `calicoctl pool show` and `ipam show`.
3. Two simulated hosts (network namespaces on an underlay), each with its own
   Docker engine and `calicoctl node` (which starts the Docker plugin). They
   reach replicas of the services on the underlay over TCP with TLS, each node
   as node:<name>; a node's certificate is refused what is the operator's. A
   Docker network per tier (frontend, database) on each host; containers on
   both hosts with plain `docker run --net <tier>`; BGP carries the routes;
   the connectivity matrix shows each tier reaching itself across hosts and
   denied elsewhere; `policy explain` says why; a rule update opens one TCP
   port; an IPAM replica is killed and `docker run` still gets an address
   from the other; then `calicoctl status` and `shownodes --detailed`;
   `calicoctl policy drops` lists what host2 denied, frontend -> database,
   with the rule that denied it; where each node and service serves its
   metrics, with a node's endpoint adds read from its own; `docker rm` gives
   the addresses back.

Safe to run again: it releases its own earlier allocations and removes its
simulated hosts when it ends (`make demo-down` also removes what a killed run
left, and stops the control plane).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import config, rpc
from calicopy.tls import Security
from tools import stack
from node.supervisor import running_pid
from tools import docker_engine, launch
from tools.lab import Container, Lab

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
    with rpc.channel(config.IPAM_ADDR.resolve()) as ch:
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


TIERS = ("frontend", "database")
PLAN = [("host1", "fe1", "frontend"), ("host2", "fe2", "frontend"),
        ("host2", "db1", "database"), ("host1", "db2", "database")]


def docker(host, *args: str) -> str:
    print(f"[{host.name}]$ docker {' '.join(args)}", flush=True)
    out = host.docker(*args).stdout
    print(out, end="", flush=True)
    return out


def matrix(containers: dict[str, Container]) -> None:
    names = list(containers)
    print("    " + "from \\ to".ljust(12) + "".join(n.ljust(11) for n in names))
    for src in names:
        row = []
        for dst in names:
            if src == dst:
                row.append("-")
            else:
                ok = containers[src].ping(containers[dst].ip)
                row.append("allowed" if ok else "denied")
        print("    " + f"{src}@{containers[src].host.name[-1]}".ljust(12) +
              "".join(r.ljust(11) for r in row))


def docker_story() -> None:
    remove_leftovers()
    lab = Lab(stack.STATE / "demo", stack.etcd_unix(), stack.pki_dir(), prefix=LAB_PREFIX,
              replicas=2)
    try:
        step("Starting two simulated hosts (network namespaces on one underlay), each with "
             "its own Docker engine, then 'calicoctl node' on each: policy agent, endpoint "
             "service, BIRD and its renderer, and the Docker plugin")
        hosts = {name: lab.add_host(name, node=True, docker=True) for name in ("host1", "host2")}
        for host in hosts.values():
            print(f"    {host.name}: {host.ip}, {host.ip6}; engine {host.engine.sock}; "
                  f"plugin {host.engine.plugin_dir}/calico.sock")
        security_story(lab, hosts["host1"])
        step("A Docker network per tier on each host (one network = one Calico profile)")
        for host in hosts.values():
            for tier in TIERS:
                docker(host, "network", "create", "--driver", "calico", "--ipam-driver",
                       "calico-ipam", tier)
        step("Containers on both hosts, with plain 'docker run --net <tier>'")
        containers: dict[str, Container] = {}
        for host_name, name, tier in PLAN:
            host = hosts[host_name]
            print(f"[{host.name}]$ docker run -d --name {name} --net {tier} "
                  f"{docker_engine.IMAGE} sleep 86400", flush=True)
            containers[name] = Container(host, name, tier)
            print(f"    {name} -> {containers[name].ip}")
        docker(hosts["host1"], "inspect", "-f",
               "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.MacAddress}}{{end}}", "fe1")
        step("Waiting for the BGP sessions")
        for host in hosts.values():
            wait_established(host)
        step("Connectivity matrix (ping): a tier reaches itself on both hosts, other tiers "
             "are denied by policy; routed, no NAT, no encapsulation")
        matrix(containers)
        for host in hosts.values():
            print(f"    {host.name} routes learned over BGP:")
            for line in host.routes().splitlines():
                if "proto bird" in line and not line.startswith("blackhole"):
                    print(f"      {line}")
        fe1, fe2, db1 = containers["fe1"], containers["fe2"], containers["db1"]
        step("Why is fe1 -> db1 denied?")
        show(hosts["host1"], "policy", "explain", fe1.ip, db1.ip)
        step("Open one port: database accepts tcp 5432 from frontend (rule update, JSON on "
             "stdin)")
        rules = {"id": "database", "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "src_tag": "frontend", "dst_ports": [5432]},
            {"action": "allow", "src_tag": "database"}, {"action": "deny"}],
            "outbound_rules": [{"action": "allow"}]}
        print("[host1]$ calicoctl profile database rule update < rules.json")
        result = hosts["host1"].calicoctl("profile", "database", "rule", "update",
                                          input=json.dumps(rules))
        print(result.stdout + result.stderr, end="")
        show(hosts["host1"], "profile", "database", "rule", "show")
        with db1.tcp_listen(5432), db1.tcp_listen(22):
            deadline = time.monotonic() + 10
            while not fe1.tcp_connect(db1.ip, 5432) and time.monotonic() < deadline:
                time.sleep(0.1)
            for src in (fe1, fe2):
                for port in (5432, 22):
                    verdict = "allowed" if src.tcp_connect(db1.ip, port) else "denied"
                    print(f"    {src.name}@{src.host.name} -> db1@host2 tcp {port}: {verdict}")
        show(hosts["host1"], "policy", "explain", fe1.ip, db1.ip, "--protocol=tcp",
             "--port=5432")
        step("An IPAM replica dies: the next 'docker run' gets its address from the other")
        first = lab.addrs["ipam"].split(",")[0]
        lab.kill_service("ipam", 1)
        print(f"    killed the IPAM replica at {first} (pid {lab.services['ipam', 1].pid})")
        print("[host1]$ docker run -d --name fe3 --net frontend "
              f"{docker_engine.IMAGE} sleep 86400", flush=True)
        containers["fe3"] = Container(hosts["host1"], "fe3", "frontend")
        print(f"    fe3 -> {containers['fe3'].ip}")
        lab.start_service("ipam", 1)
        print(f"    the replica at {first} is back")
        for host in hosts.values():
            step(f"calicoctl status on {host.name}")
            show(host, "status")
        step("calicoctl shownodes --detailed")
        show(hosts["host1"], "shownodes", "--detailed")
        step("What host2 dropped, and which rule did (the frontend -> database pings of the "
             "matrix and the tcp 22 connects): sampled by NFLOG, asked through etcd")
        show(hosts["host1"], "policy", "drops", "--node=host2")
        metrics_story(hosts)
        step("Removing the containers: Docker releases their addresses through calico-ipam")
        for c in containers.values():
            docker(c.host, "rm", "-f", c.name)
        for host in hosts.values():
            show(host, "node", "stop")
        calicoctl("ipam", "check")
    finally:
        lab.close()


def metrics_story(hosts) -> None:
    step("Metrics (Prometheus): each node serves all its processes' on one port in its "
         "namespace; each service replica its own (docs/grafana-dashboard.json reads them)")
    for host in hosts.values():
        url = json.loads(host.paths.status.read_text()).get("metrics")
        if not url:
            print(f"    {host.name}: serves no metrics (see its node.log)")
            continue
        scrape = host.ns.run(sys.executable, "-c", SCRAPE, url, check=False)
        adds = [line for line in scrape.stdout.splitlines()
                if line.startswith("calico_endpoint_adds_total")]
        print(f"    {host.name}: {url}  ({'; '.join(adds) or scrape.stderr.strip()})")
    print("    the services: the 'metrics on' addresses 'make up' printed above")


# Fetch a URL inside a host's namespace (the node serves on its loopback).
SCRAPE = ("import sys, urllib.request; "
          "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")


def security_story(lab, host) -> None:
    step("TLS and identities: every TCP port serves mutual TLS (etcd too, with its own "
         "users); calicoctl acts as admin, each node's processes as node:<name>")
    print(f"    the hosts reach two replicas of each service over the underlay: IPAM "
          f"{lab.ipam}, policy {lab.policy}, BGP {lab.bgp}; etcd {lab.etcd}")
    print(f"    certificates in {stack.pki_dir()}")
    ok = rpc.check_health(config.IPAM_ADDR.resolve(),
                          security=Security(None, insecure=True), timeout=2)
    print(f"    a plaintext health check of {rpc.describe_target(config.IPAM_ADDR.resolve())}: "
          f"{'ANSWERED (wrong!)' if ok else 'refused'}")
    node = lab.identities.env(f"node:{host.name}")
    print(f"[{host.name}]$ calicoctl pool add 10.99.0.0/16   # with node:{host.name}'s "
          "certificate")
    result = subprocess.run([sys.executable, "-m", "cli.calicoctl", "pool", "add",
                             "10.99.0.0/16"], capture_output=True, text=True,
                            env={**os.environ, **node})
    print(f"    exit {result.returncode}: {(result.stderr or result.stdout).strip()}")
    if result.returncode == 0 or ok:
        raise RuntimeError("the control plane let an unauthorised call through")


def remove_leftovers() -> None:
    """What an interrupted demo left: its nodes (each a session of its own, so
    not stopped with the demo), its simulated hosts and their engines."""
    for pid_file in sorted((stack.STATE / "demo" / "state").glob("*/node.pid")):
        pid = running_pid(pid_file, pid_file.parent.name)
        if pid:
            print(f"    stopping the node {pid_file.parent.name} left running (pid {pid})")
            launch.stop_pid(pid, timeout=15)
            try:
                os.killpg(pid, 9)       # anything of its session still there
            except ProcessLookupError:
                pass
    Lab.remove_leftovers(LAB_PREFIX)


def wait_established(host, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "Established" not in host.calicoctl("status").stdout:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.name} has no established BGP session")
        time.sleep(0.5)
    print(f"    {host.name}: established")


def main() -> int:
    step("Starting etcd and the cluster services, two replicas each (make up)")
    stack.up()
    os.environ.update(stack.client_env())       # calicoctl fails over between them all
    ipam_story()
    docker_story()
    print("\nThe control plane is still running; 'make demo-down' stops it.")
    return 0


def down() -> int:
    remove_leftovers()
    stack.down()
    print("Removed the demo's hosts and engines, and stopped the control plane.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(down() if sys.argv[1:] == ["--down"] else main())
    except (subprocess.CalledProcessError, grpc.RpcError, RuntimeError, AssertionError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
