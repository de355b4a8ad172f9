"""Idle node CPU benchmark (make bench).

Two simulated hosts, each running `calicoctl node` (supervisor, policy
agent, endpoint service, BIRD and its renderer, the IP-in-IP agent), peered
in a full BGP mesh, with a few workloads each; once every BGP session is
established and the workloads are networked, nothing changes. The CPU time
(utime + stime in /proc/<pid>/stat, with the commands it ran and waited
for: cutime + cstime) each node process uses over WINDOW seconds is read at
both ends of the window.

Prints, per process of the first host, the share of one core it used, and
the node's total (aim: <= 1 % of a core for all of a node's processes).
"""

from __future__ import annotations

import json
import os
import sys
import time

from common import control_plane
from tools.lab import Lab

WINDOW = float(os.environ.get("CALICO_BENCH_IDLE_WINDOW", "60"))
WORKLOADS = 3
SETTLE = 10.0       # seconds after the last change before measuring


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (fields 14-17 of
    /proc/<pid>/stat): its own CPU and that of the commands it waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def node_processes(host) -> dict[str, int]:
    """name -> pid of the node's supervisor and the children it runs."""
    status = json.loads(host.paths.status.read_text())
    found = {"supervisor": host.supervisor_pid()}
    found.update({name: c["pid"] for name, c in status["children"].items() if c["pid"]})
    return found


def main() -> int:
    with control_plane("idle") as plane:
        Lab.remove_leftovers("benchidle")
        lab = Lab(plane.tmp / "lab", plane.etcd_unix, plane.pki, prefix="benchidle")
        try:
            hosts = [lab.add_host(f"i{n}", node=True) for n in range(2)]
            a = hosts[0]
            for args in (("pool", "add", "10.70.0.0/16"), ("profile", "add", "net")):
                result = a.calicoctl(*args)
                if result.returncode != 0:
                    raise RuntimeError(f"calicoctl {' '.join(args)}: {result.stderr}")
            for host in hosts:
                for w in range(WORKLOADS):
                    host.add_workload(f"{host.name}w{w}", profiles=("net",))
            deadline = time.monotonic() + 60
            while any(h.calicoctl("status").stdout.count("Established") < 2 for h in hosts):
                if time.monotonic() > deadline:
                    raise RuntimeError("BGP sessions did not come up")
                time.sleep(0.5)
            time.sleep(SETTLE)          # let the last changes' passes finish
            procs = node_processes(a)
            before = {name: cpu_seconds(pid) for name, pid in procs.items()}
            start = time.monotonic()
            time.sleep(WINDOW)
            elapsed = time.monotonic() - start
            after = {name: cpu_seconds(pid) for name, pid in procs.items()}
            if node_processes(a) != procs:
                raise RuntimeError("a node process restarted during the window")
        finally:
            lab.close()

    print(f"Idle node CPU over {elapsed:.0f} s ({WORKLOADS} workloads per host, "
          f"2 hosts, full mesh; share of one core)")
    total = 0.0
    for name in procs:
        used = after[name] - before[name]
        total += used
        print(f"  {name:<16} {used / elapsed * 100:6.2f} %   ({used:.2f} s CPU)")
    print(f"  {'node total':<16} {total / elapsed * 100:6.2f} %   (aim: <= 1 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
