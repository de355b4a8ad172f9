"""Docker benchmark (make bench): `docker run` to first ping, and TCP throughput.

Two simulated hosts, a and b, each running `calicoctl node` (which serves the
Docker plugin) and its own real dockerd, over a private etcd and the IPAM,
BGP and policy services.

1. `docker run` -> first echo reply from another container. On host a a
   Calico network (`--driver calico --ipam-driver calico-ipam`, subnet = a
   Calico pool) and a network of Docker's own bridge driver, each with a
   pinger container already running. Every run starts the clock, runs
   `docker run -d --ip <known address>` (blocking until the CLI returns),
   then sends echo requests to the new container from inside the pinger's
   network namespace through a raw ICMP socket opened once (tools.icmp: no
   process per probe), a probe every 10 ms at most, until one is answered.
   The Calico target is probed at the same time, alternately, from a second
   pinger on host b (the cross-host figure, from the same `docker run`). The target is removed
   (`docker rm -f`, not timed) before the next run; bridge and Calico runs
   alternate so both see the same machine load. The pinger on host a holds
   the targets' address block, so its route is on host b before the runs.
2. Container-to-container TCP throughput: iperf3 (run from the host's
   filesystem with `nsenter --net=/proc/<pid>/ns/net`, the image being
   busybox only) between a Calico container on host a and one on host b,
   versus two plain namespaces joined directly by a veth pair (the aim), and
   for reference between the two hosts' own namespaces over the simulated
   underlay (veth, bridge, veth), which every cross-host packet also crosses.
   Runs alternate; the median of each is printed.

Everything it creates is removed before it exits, also on failure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


from common import control_plane, percentile
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import rpc
from tools import launch
from tools.docker_engine import IMAGE
from tools.icmp import Pinger
from tools.lab import Lab, Namespace

PREFIX = "benchdk"
POOL, BRIDGE_SUBNET = "10.170.0.0/16", "10.171.0.0/16"
CALICO_NET, BRIDGE_NET = "calnet", "brnet"
# Pingers: a's holds block 10.170.0.0/26 for host a (so the targets' block
# route is already on b), b's sits in another block.
PINGER_A, PINGER_B, PINGER_BRIDGE = "10.170.0.2", "10.170.1.2", "10.171.0.2"
TARGET_SLOTS = 40               # targets cycle through .10 .. .49 of their /26
IPERF_SECONDS, IPERF_RUNS, IPERF_PORT = 3, 3, 5201
VETH_A, VETH_B = "192.168.250.1", "192.168.250.2"


def target_ip(subnet: str, i: int) -> str:
    return f"{subnet.rsplit('.', 2)[0]}.0.{10 + i % TARGET_SLOTS}"


def established(host) -> int:
    return host.calicoctl("status").stdout.count("Established")


def wait_for(what: str, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.3)


def container(host, name: str, net: str, ip: str) -> None:
    host.docker("run", "-d", "--name", name, "--net", net, "--ip", ip, IMAGE,
                "sleep", "3600")


def run_to_reply(host, net: str, name: str, ip: str, pingers: dict[str, Pinger],
                 limit: float = 30) -> tuple[float, dict[str, float]]:
    """`docker run -d` a container at ``ip``; returns the seconds until the CLI
    returned and, per pinger, until its first echo reply from ``ip``. The
    container is removed afterwards (not timed)."""
    start = time.perf_counter()
    container(host, name, net, ip)
    returned = time.perf_counter() - start
    waiting, reached = dict(pingers), {}
    try:
        while waiting:
            for label, pinger in list(waiting.items()):
                if pinger.ping(ip, timeout=0.01):
                    reached[label] = time.perf_counter() - start
                    del waiting[label]
            if waiting and time.perf_counter() - start > limit:
                raise RuntimeError(f"{name} at {ip} not answering {sorted(waiting)} "
                                   f"after {limit:.0f}s")
    finally:
        host.docker("rm", "-f", name, check=False)
    return returned, reached


def iperf(server_net: str, client_net: str, server_ip: str) -> float:
    """One iperf3 TCP test (client -> server); received Gbit/s."""
    server = subprocess.Popen(["nsenter", f"--net={server_net}", "iperf3", "-s", "-1",
                               "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:     # until the server listens
            result = subprocess.run(
                ["nsenter", f"--net={client_net}", "iperf3", "-c", server_ip, "-p",
                 str(IPERF_PORT), "-t", str(IPERF_SECONDS), "-J"],
                capture_output=True, text=True, timeout=IPERF_SECONDS + 30)
            report = json.loads(result.stdout or "{}")
            # iperf3 3.12 with -J exits 0 even when it could not connect.
            if result.returncode == 0 and "error" not in report:
                return report["end"]["sum_received"]["bits_per_second"] / 1e9
            if time.monotonic() > deadline or "refused" not in report.get("error", ""):
                raise RuntimeError(f"iperf3 to {server_ip} failed: "
                                   f"{report.get('error') or result.stderr}")
            time.sleep(0.05)
    finally:
        launch.stop_pid(server.pid, timeout=5)


def ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50,
                        help="docker runs per driver (default 50)")
    runs = parser.parse_args().runs

    with control_plane("docker") as plane:
        tmp = plane.tmp
        Lab.remove_leftovers(PREFIX)
        lab = None
        try:
            with rpc.channel(plane.ipam_tcp) as ch:
                ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(
                    ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr=POOL)), timeout=10)
            lab = Lab(tmp / "lab", plane.etcd_unix, plane.pki, prefix=PREFIX)
            a = lab.add_host("a", node=True, docker=True, ipv6=False)
            b = lab.add_host("b", node=True, docker=True, ipv6=False)
            for host in (a, b):
                host.docker("network", "create", "--driver", "calico", "--ipam-driver",
                            "calico-ipam", "--subnet", POOL, CALICO_NET)
            a.docker("network", "create", "--driver", "bridge", "--subnet", BRIDGE_SUBNET,
                     BRIDGE_NET)
            container(a, "pinger-a", CALICO_NET, PINGER_A)
            container(b, "pinger-b", CALICO_NET, PINGER_B)
            container(a, "pinger-br", BRIDGE_NET, PINGER_BRIDGE)
            pinger_a, pinger_b, pinger_br = (
                Pinger(h.container_netns(c)) for h, c in
                ((a, "pinger-a"), (b, "pinger-b"), (a, "pinger-br")))
            wait_for("BGP sessions", lambda: established(a) >= 1 and established(b) >= 1)
            pinger_b.wait_reachable(PINGER_A, limit=30)

            calico = {"run": [], "local": [], "cross": []}
            bridge = {"run": [], "local": []}
            started = time.perf_counter()
            for i in range(runs + 1):       # the first run of each warms up, not counted
                ip = target_ip(BRIDGE_SUBNET, i)
                returned, reached = run_to_reply(a, BRIDGE_NET, f"tb{i}", ip,
                                                 {"local": pinger_br})
                if i:
                    bridge["run"].append(returned)
                    bridge["local"].append(reached["local"])
                ip = target_ip(POOL, i)
                returned, reached = run_to_reply(a, CALICO_NET, f"tc{i}", ip,
                                                 {"local": pinger_a, "cross": pinger_b})
                if i:
                    calico["run"].append(returned)
                    calico["local"].append(reached["local"])
                    calico["cross"].append(reached["cross"])
            run_seconds = time.perf_counter() - started
            for pinger in (pinger_a, pinger_b, pinger_br):
                pinger.close()

            # Throughput: containers across hosts vs a bare veth pair.
            v1, v2 = Namespace(lab, f"{PREFIX}-v1"), Namespace(lab, f"{PREFIX}-v2")
            subprocess.run(["ip", "link", "add", "veth0", "netns", v1.name, "type", "veth",
                            "peer", "name", "veth0", "netns", v2.name], check=True)
            for ns, ip in ((v1, VETH_A), (v2, VETH_B)):
                ns.run("ip", "addr", "add", f"{ip}/30", "dev", "veth0")
                ns.run("ip", "link", "set", "veth0", "up")
            server_c, client_c = a.container_netns("pinger-a"), b.container_netns("pinger-b")
            ours, underlay, baseline = [], [], []
            for _ in range(IPERF_RUNS):
                ours.append(iperf(server_c, client_c, PINGER_A))
                underlay.append(iperf(a.ns.path, b.ns.path, a.ip))
                baseline.append(iperf(v1.path, v2.path, VETH_A))
        finally:
            if lab is not None:
                lab.close()

    def row(name: str, values: list[float], returned: list[float]) -> str:
        v, after = ms(values), ms([t - r for t, r in zip(values, returned)])
        return f"{name:<38} {len(v):>4} {percentile(ms(returned), 50):>8.0f} " \
               f"{max(after):>9.1f} {percentile(v, 50):>8.0f} {percentile(v, 99):>8.0f}"

    def ratio(name: str, ours_: list[float], theirs: list[float]) -> str:
        return f"{name:<38} {'':>4} {'':>8} {'':>9} " \
               f"{percentile(ours_, 50) / percentile(theirs, 50):>8.2f} " \
               f"{percentile(ours_, 99) / percentile(theirs, 99):>8.2f}"

    print("docker run -d -> first echo reply from another container "
          "(real dockerd per simulated host)")
    print(f"{'':<38} {'n':>4} {'run ms':>8} {'+ping ms':>9} {'p50 ms':>8} {'p99 ms':>8}")
    print(row("bridge (Docker's), pinger same host", bridge["local"], bridge["run"]))
    print(row("calico (ours), pinger same host", calico["local"], calico["run"]))
    print(row("calico (ours), pinger other host", calico["cross"], calico["run"]))
    print(ratio("ratio ours/bridge, same host", calico["local"], bridge["local"]))
    print(ratio("ratio ours other host/bridge", calico["cross"], bridge["local"]))
    print(f"run ms: p50 until `docker run -d` returned; then raw-ICMP probes from the "
          f"pinger's netns, one every <= 10 ms;\n+ping ms: the most any first reply came after "
          f"the CLI returned ({2 * runs} docker runs in {run_seconds:.0f} s)")
    print()
    print(f"TCP throughput, iperf3 -t {IPERF_SECONDS}, median of {IPERF_RUNS}")
    print(f"{'':<38} {'Gbit/s':>8}   runs")
    print(f"{'veth pair between two namespaces':<38} {statistics.median(baseline):>8.2f}   "
          + " ".join(f"{x:.2f}" for x in baseline))
    print(f"{'calico containers, across two hosts':<38} {statistics.median(ours):>8.2f}   "
          + " ".join(f"{x:.2f}" for x in ours))
    print(f"{'host a -> host b over the lab underlay':<38} "
          f"{statistics.median(underlay):>8.2f}   " + " ".join(f"{x:.2f}" for x in underlay))
    print(f"{'ratio ours/veth':<38} "
          f"{statistics.median(ours) / statistics.median(baseline):>8.2f}   aim >= 0.9")
    print(f"{'ratio ours/underlay':<38} "
          f"{statistics.median(ours) / statistics.median(underlay):>8.2f}   "
          "(the hosts' own path: veth, bridge, veth; no Calico)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
