"""`make demo-xsubnet`: a pair of workloads on hosts on two subnets.

Two simulated hosts on different underlay subnets, joined by a router
namespace that forwards between them and knows nothing of the pools. BGP
between the hosts is multi-hop; with the pool routed natively the workloads
cannot reach each other (the router has no route to them); switched to
IP-in-IP cross-subnet, they do, through tunl0, with the MTU the rule gives.
Uses the control plane of `make up` (started if needed, left running); its
pool and hosts are removed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from node.supervisor import running_pid
from tools import launch, stack
from tools.demo import show, step
from tools.lab import Lab

POOL = "10.48.0.0/16"
LAB_PREFIX = "demox"


def sh(host, *argv: str) -> str:
    print(f"[{host.name}]$ {' '.join(argv)}", flush=True)
    out = host.ns.run(*argv, check=False)
    print(out.stdout + out.stderr, end="", flush=True)
    return out.stdout


def wait(what, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def remove_leftovers() -> None:
    for pid_file in sorted((stack.STATE / "demo-xsubnet" / "state").glob("*/node.pid")):
        pid = running_pid(pid_file, pid_file.parent.name)
        if pid:
            launch.stop_pid(pid, timeout=15)
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
    Lab.remove_leftovers(LAB_PREFIX)


def main() -> int:
    step("Starting etcd and the cluster services (make up)")
    stack.up()
    remove_leftovers()
    lab = Lab(stack.STATE / "demo-xsubnet", stack.etcd_unix(), stack.pki_dir(),
              prefix=LAB_PREFIX, subnets=2)
    a = None
    try:
        step(f"A pool routed natively, {POOL}, and a profile")
        for args in (("pool", "add", POOL), ("profile", "add", "XDEMO")):
            print(f"$ calicoctl {' '.join(args)}", flush=True)
            subprocess.run([sys.executable, "-m", "cli.calicoctl", *args], check=True)
        step("Two hosts on two subnets (172.30.0.0/24 and 172.30.1.0/24), a plain router "
             "between them")
        a = lab.add_host("xa", ipv6=False, node=True)
        b = lab.add_host("xb", ipv6=False, node=True, subnet=1)
        # From the demo's pool by name: another demo may have left pools of its own.
        wa = a.add_workload("xwa", POOL, profiles=("XDEMO",))
        wb = b.add_workload("xwb", POOL, profiles=("XDEMO",))
        step("BGP between them is multi-hop (rendered from each host's routes)")
        wait("the session", lambda: "Established" in a.calicoctl("status").stdout)
        show(a, "status")
        step(f"Natively routed, {wa.ip} cannot reach {wb.ip}: the router knows no pool")
        print(f"    ping {wa.ip} -> {wb.ip}: {'ok' if wa.ping(wb.ip) else 'no answer'}")
        sh(a, "ip", "route", "get", wb.ip)
        step("The pool switched to IP-in-IP, cross-subnet: no restart needed")
        show(a, "pool", "add", POOL, "--ipip=cross-subnet")
        show(a, "pool", "show", "--ipv4")
        wait("the tunnel", lambda: wa.ping(wb.ip))
        print(f"    ping {wa.ip} -> {wb.ip}: ok")
        sh(a, "ip", "route", "get", wb.ip)
        sh(a, "ip", "-4", "addr", "show", "dev", "tunl0")
        xc = a.add_workload("xwc", POOL, profiles=("XDEMO",))
        print(f"    a workload added now gets MTU "
              f"{xc.ns.run('cat', '/sys/class/net/eth0/mtu').stdout.strip()} "
              "(the underlay's 1500 minus 20)")
        big = xc.run("ping", "-c1", "-W2", "-M", "do", "-s", "1452", wb.ip)
        print(f"    ping -M do -s 1452 (a 1480-byte packet): "
              f"{'ok' if big.returncode == 0 else 'failed'}")
    finally:
        for host in list(lab.hosts.values()):
            for w in list(host.workloads):
                host.calicoctl("container", "remove", host.workloads[w].ref)
        lab.close()
        for args in (("pool", "remove", POOL, "--force"), ("profile", "remove", "XDEMO")):
            subprocess.run([sys.executable, "-m", "cli.calicoctl", *args],
                           capture_output=True)
    print("\nRemoved the demo's hosts and pool; the control plane is still running "
          "('make down' stops it).")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (subprocess.CalledProcessError, RuntimeError, AssertionError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
