"""Live-drop sampling benchmark (make bench): what the NFLOG rules and their
listener cost.

One simulated host (a namespace) with three workloads on veths, programmed
by the policy agent's own code (node.policy.dataplane, Tables, IpSets) from
a fixed policy: web1 and web2 in profile WEB (members reach members),
intruder in profile OTHER (denied by WEB's inbound deny). Measured:

- allowed traffic with sampling on (the NFLOG rules programmed, the agent's
  listener, node.policy.drops.DropLog, bound in a process of its own) and
  off (the same chains without the NFLOG rules, no listener): TCP
  throughput web1 -> web2 (iperf3, one stream, median of RUNS runs of
  SECONDS s, interleaved) and a ping flood (packets per second of `ping -f`,
  median of RUNS, the order alternating). Aim: on/off ratio >= 0.98;
- a denied flood of FLOOD_PPS UDP packets per second for FLOOD_SECONDS s from
  intruder to web2: the listener process's CPU (user + system time over
  wall time) and the samples it received (the per-rule limit caps them).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time

from common import ROOT
from calicopy.model.endpoint import Endpoint
from calicopy.model.policy import Profile, Snapshot
from node.policy import commands, dataplane
from node.policy.ipsets import IpSets
from node.policy.iptables import Tables

HOST = "cbd-host"
RUNS, SECONDS, PINGS = 5, 2, 20000
FLOOD_PPS, FLOOD_SECONDS = 10000, 5
PORT = 5302
SETTLE = 1.0


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def host_run(argv, stdin="", check=True, timeout=60, raw=False):
    """node.policy.commands.run, in the simulated host."""
    return commands.run(in_ns(HOST, *argv), stdin, check=check, timeout=timeout, raw=raw)


def workload(n: int, name: str, profile: str) -> Endpoint:
    ep = Endpoint(endpoint_id=f"{n:x}" * 32, node="bench", orchestrator="bench",
                  workload_id=name, interface_name="eth0", netns=f"cbd-{name}",
                  mac=f"02:00:00:00:00:0{n}", profile_ids=[profile])
    ep.set_ips([f"10.99.0.{n}"])
    return ep


def build(eps: list[Endpoint]) -> None:
    sh("ip", "netns", "add", HOST)
    sh(*in_ns(HOST, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
    sh("ip", "-n", HOST, "link", "set", "lo", "up")
    for ep in eps:
        ns, ip = ep.netns, ep.ips[0]
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", HOST, "link", "add", ep.host_interface, "type", "veth", "peer", "eth0",
           "netns", ns)
        sh("ip", "-n", ns, "link", "set", "eth0", "address", ep.mac)
        for n in (HOST, ns):
            sh("ip", "-n", n, "link", "set", ep.host_interface if n == HOST else "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "169.254.1.1", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "default", "via", "169.254.1.1")
        mac = json.loads(sh("ip", "-j", "-n", HOST, "link", "show", ep.host_interface).stdout)
        sh("ip", "-n", ns, "neigh", "add", "169.254.1.1", "lladdr", mac[0]["address"],
           "dev", "eth0")          # as the endpoint service does: the host answers
        sh("ip", "-n", HOST, "route", "add", f"{ip}/32", "dev", ep.host_interface)


def program(desired: dataplane.Desired, sampling: bool) -> None:
    """The agent's chains (without the NFLOG rules when not ``sampling``)."""
    ipsets = IpSets(host_run)
    ipsets.update(desired.ipsets, ipsets.current())
    backend = "nft"
    for version, tables in desired.tables.items():
        for table, chains in tables.items():
            if not sampling:
                chains = {c: [r for r in rules if "-j NFLOG" not in r]
                          for c, rules in chains.items()}
            Tables(version, backend, host_run).apply(table, chains, full=True)


def listener() -> subprocess.Popen:
    """The agent's drop listener, alone in a process in the host."""
    code = ("import signal, sys, threading\n"
            "from node.policy.drops import DropLog\n"
            "stop = threading.Event()\n"
            "signal.signal(signal.SIGTERM, lambda *a: stop.set())\n"
            "log = DropLog('nft')\n"
            "print('imported', flush=True)\n"
            "log.run(stop)\n"
            "print(log.seq, flush=True)\n")
    proc = subprocess.Popen(in_ns(HOST, sys.executable, "-c", code), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.readline()  # its imports done: they must not weigh on a measurement
    time.sleep(SETTLE)      # a bench, not a test: the bind takes well under this
    return proc


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf(client: str, server: str, ip: str) -> float:
    srv = subprocess.Popen(in_ns(server, "iperf3", "-s", "-1", "-p", str(PORT)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            done = sh(*in_ns(client, "iperf3", "-c", ip, "-p", str(PORT), "-t", str(SECONDS),
                             "-J"), check=False, timeout=SECONDS + 30)
            received = json.loads(done.stdout or "{}").get("end", {}).get("sum_received")
            if done.returncode == 0 and received:
                return received["bits_per_second"] / 1e9
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 to {ip} failed: {done.stderr[-300:]}")
    finally:
        srv.kill()
        srv.wait()


def ping_flood(client: str, ip: str) -> float:
    start = time.monotonic()
    sh(*in_ns(client, "ping", "-f", "-q", "-c", str(PINGS), ip), timeout=120)
    return PINGS / (time.monotonic() - start)


def denied_flood(client: str, ip: str) -> int:
    code = ("import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"n, start = 0, time.monotonic()\n"
            f"while time.monotonic() - start < {FLOOD_SECONDS}:\n"
            f"    due = int((time.monotonic() - start) * {FLOOD_PPS})\n"
            "    while n < due:\n"
            f"        s.sendto(b'x' * 64, ('{ip}', 9))\n"
            "        n += 1\n"
            "    time.sleep(0.0005)\n"
            "print(n)\n")
    done = sh(*in_ns(client, sys.executable, "-c", code), timeout=FLOOD_SECONDS + 30)
    return int(done.stdout.strip())


def main() -> int:
    web1, web2 = workload(1, "web1", "WEB"), workload(2, "web2", "WEB")
    intruder = workload(3, "intruder", "OTHER")
    eps = [web1, web2, intruder]
    snapshot = Snapshot(1, eps, {"WEB": Profile.default("WEB"),
                                 "OTHER": Profile.default("OTHER")}, {}, [], "drop")
    desired = dataplane.compute(snapshot, "bench")
    procs: list[subprocess.Popen] = []
    try:
        build(eps)
        target = web2.ips[0]
        results = {True: {"tcp": [], "ping": []}, False: {"tcp": [], "ping": []}}
        for run in range(RUNS):
            # Alternate which goes first, and settle alike, so neither gains by order.
            for sampling in ((True, False) if run % 2 == 0 else (False, True)):
                program(desired, sampling)
                proc = listener() if sampling else None
                if proc:
                    procs.append(proc)
                else:
                    time.sleep(SETTLE)
                results[sampling]["tcp"].append(iperf(web1.netns, web2.netns, target))
                results[sampling]["ping"].append(ping_flood(web1.netns, target))
                if proc:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=10)
        program(desired, True)
        proc = listener()
        procs.append(proc)
        before, wall = cpu_seconds(proc.pid), time.monotonic()
        sent = denied_flood(intruder.netns, target)
        used, wall = cpu_seconds(proc.pid) - before, time.monotonic() - wall
        proc.send_signal(signal.SIGTERM)
        samples = int((proc.communicate(timeout=10)[0] or "0").split()[-1])
        print("Live-drop sampling (NFLOG rules + listener) on vs off, allowed traffic "
              f"web1 -> web2 (median of {RUNS}):")
        for what, unit in (("tcp", "Gbit/s"), ("ping", "pings/s")):
            on, off = (statistics.median(results[s][what]) for s in (True, False))
            spread = ", ".join(f"{min(results[s][what]):.2f}-{max(results[s][what]):.2f}"
                               for s in (True, False))
            print(f"  {what:<5} on {on:10.2f} {unit:<8} off {off:10.2f} {unit:<8} "
                  f"ratio {on / off:.3f} (aim >= 0.98; runs on, off: {spread})")
        print(f"Denied flood: {sent} UDP packets in {FLOOD_SECONDS}s "
              f"({sent / FLOOD_SECONDS:.0f}/s) intruder -> web2: the listener used "
              f"{100 * used / wall:.1f}% of one core, received {samples} samples "
              f"(limit: 100/s per rule after a burst of 100)")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in [ep.netns for ep in eps] + [HOST]:
            sh("ip", "netns", "del", ns, check=False)


if __name__ == "__main__":
    sys.exit(main())
