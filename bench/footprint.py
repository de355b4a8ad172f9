"""Node footprint benchmark (make bench): memory and idle CPU of one node.

One simulated host runs `calicoctl node` with its own Docker engine, so the
node runs all its processes: the supervisor, policy agent, endpoint service,
BIRD renderer, BIRD, IP-in-IP agent, Docker plugin and CALICO_IP proxy (the
engine itself, dockerd and containerd, is Docker's and not counted). Once the
node is up and has been left alone for a while, it prints each process's PSS
(``Pss:`` of /proc/<pid>/smaps_rollup: shared pages divided between the
processes that map them, so the figures add up to what the node uses), the
total, and the CPU each process used over the idle window (utime + stime of
/proc/<pid>/stat), as a share of one core. The aims (issue 15): at most 100
MB PSS in total and 1 % of a core idle. Where the memory goes: each process's
private pages (what it wrote or allocated itself since the supervisor forked
it, or all of it for a program started afresh) and its resident pages it
shares (with the supervisor it was forked from, or libraries).

Everything it creates is removed before it exits, also on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import control_plane
from procstat import cpu_seconds, descendants, memory_kib, name
from tools.lab import Lab

PREFIX = "benchfp"
AIM_PSS_MB = 100
AIM_CPU_PCT = 1.0
SETTLE = 10.0       # seconds left alone after the start, before measuring


def node_processes(host) -> list[int]:
    """The node's processes: its supervisor and everything below it."""
    pid = host.supervisor_pid()
    if pid is None:
        raise RuntimeError(f"the node of {host.name} is not running")
    return descendants(pid)


def wait_running(host, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(host.paths.status.read_text())
        if all(c["state"] == "running" for c in status["children"].values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"node processes not all running: {status['children']}")
        time.sleep(0.5)


def measure(host, seconds: float) -> list[tuple]:
    """(name, pid, PSS MiB, CPU % of a core over ``seconds``, private MiB,
    shared resident MiB) per process."""
    pids = node_processes(host)
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(seconds)
    after = node_processes(host)
    if sorted(after) != sorted(pids):
        raise RuntimeError(f"the node's processes changed while idle: {pids} -> {after}")
    rows = []
    for pid in pids:
        mem = memory_kib(pid)
        rows.append((name(pid), pid, mem["Pss"] / 1024,
                     100 * (cpu_seconds(pid) - before[pid]) / seconds,
                     mem["Private"] / 1024, (mem["Rss"] - mem["Private"]) / 1024))
    return rows


def report(rows: list[tuple], seconds: float) -> None:
    print(f"\nNode footprint: one host with its Docker engine, idle for {seconds:g} s")
    print(f"{'process':<22} {'pid':>7} {'PSS MiB':>9} {'CPU %':>7} {'private MiB':>12} "
          f"{'shared MiB':>11}")
    for proc, pid, pss, cpu, private, shared in rows:
        print(f"{proc:<22} {pid:>7} {pss:>9.1f} {cpu:>7.2f} {private:>12.1f} {shared:>11.1f}")
    total_mb = sum(r[2] for r in rows) * 1024 * 1024 / 1e6
    total_cpu = sum(r[3] for r in rows)
    print(f"{'total':<22} {len(rows):>7} {sum(r[2] for r in rows):>9.1f} {total_cpu:>7.2f} "
          f"{sum(r[4] for r in rows):>12.1f}")
    print(f"aim: PSS <= {AIM_PSS_MB} MB: {total_mb:.1f} MB "
          f"({'met' if total_mb <= AIM_PSS_MB else 'MISSED'}); idle CPU <= {AIM_CPU_PCT:g} % "
          f"of a core: {total_cpu:.2f} % ({'met' if total_cpu <= AIM_CPU_PCT else 'MISSED'})")
    print("peer (published, not measured here): calico-node (Go: Felix, BIRD, confd) "
          "116-300 MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="length of the idle window (default 60)")
    seconds = parser.parse_args().seconds
    with control_plane("footprint") as plane:
        Lab.remove_leftovers(PREFIX)
        lab = Lab(plane.tmp / "lab", plane.etcd_unix, plane.pki, prefix=PREFIX)
        try:
            host = lab.add_host("a", node=True, docker=True, ipv6=False)
            wait_running(host)
            time.sleep(SETTLE)      # past start-up work: what is measured is idle
            rows = measure(host, seconds)
        finally:
            lab.close()
    report(rows, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
