"""Simulated hosts and workloads made of real network namespaces (tests, demo, bench).

A ``Lab`` owns everything it creates and removes all of it in ``close()``,
which the fixtures call in ``finally``: node processes are stopped by the PID
we started, namespaces deleted (their interfaces and routes go with them).

Topology: one "underlay" namespace holds a bridge with the router address
(172.30.0.1, fd99::1); each host is a namespace with a veth on that bridge,
its own address and a default route through the router (proxy ARP for
169.254.1.1 only answers when the host has a route off the workload's link).
Each host runs its own endpoint service inside its namespace; it reaches etcd
and the IPAM service over unix sockets, so no IP traffic crosses into the
test's own namespace. Workloads are namespaces given to a host with
``calicoctl container add``, run inside that host.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from calicopy.rpc import check_health
from tools import launch

ROOT = Path(__file__).resolve().parent.parent  # the repository
UNDERLAY_V4 = "172.30.0"
UNDERLAY_V6 = "fd99::"
_counter = itertools.count(1)


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


class Namespace:
    def __init__(self, lab: "Lab", name: str):
        self.lab, self.name = lab, name
        self.path = f"/var/run/netns/{name}"
        sh("ip", "netns", "add", name)
        lab.namespaces.append(self)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *argv: str, check: bool = True, timeout: float = 30, env=None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True,
                              text=True, check=check, timeout=timeout,
                              env={**os.environ, **(env or {})})


class Lab:
    def __init__(self, tmp: Path, etcd: str, ipam: str, prefix: str = ""):
        self.tmp, self.etcd, self.ipam = tmp, etcd, ipam
        self.prefix = prefix or f"cp{os.getpid() % 100000}x{next(_counter)}"
        self.namespaces: list[Namespace] = []
        self.procs: list[subprocess.Popen] = []
        self.hosts: dict[str, Host] = {}
        self.underlay = Namespace(self, f"{self.prefix}-u")
        u = self.underlay
        u.run("ip", "link", "add", "br0", "type", "bridge")
        u.run("ip", "addr", "add", f"{UNDERLAY_V4}.1/24", "dev", "br0")
        u.run("ip", "addr", "add", f"{UNDERLAY_V6}1/64", "dev", "br0", "nodad")
        u.run("ip", "link", "set", "br0", "up")

    def add_host(self, name: str, ipv6: bool = True) -> "Host":
        host = Host(self, name, len(self.hosts) + 2, ipv6)
        self.hosts[name] = host
        return host

    @staticmethod
    def remove_leftovers(prefix: str) -> None:
        """Delete namespaces a killed run with this fixed prefix left behind."""
        for line in sh("ip", "netns", "list").stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(f"{prefix}-"):
                sh("ip", "netns", "del", name, check=False)

    def close(self) -> None:
        for proc in reversed(self.procs):
            launch.stop_pid(proc.pid)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns.name, check=False)


class Host:
    """A simulated host: a namespace on the underlay running its own node."""

    def __init__(self, lab: Lab, name: str, index: int, ipv6: bool):
        self.lab, self.name = lab, name
        self.ns = Namespace(lab, f"{lab.prefix}-{name}")
        self.ip = f"{UNDERLAY_V4}.{index}"
        self.ip6 = f"{UNDERLAY_V6}{index}"
        self.state_dir = lab.tmp / "state"
        self.workloads: dict[str, Workload] = {}
        # Underlay link: host end "eth0" in the host, other end on the bridge.
        peer = f"{lab.prefix}{index}"[-15:]
        sh("ip", "link", "add", "eth0", "netns", self.ns.name, "type", "veth", "peer", "name",
           peer, "netns", lab.underlay.name)
        lab.underlay.run("ip", "link", "set", peer, "master", "br0", "up")
        self.ns.run("ip", "addr", "add", f"{self.ip}/24", "dev", "eth0")
        self.ns.run("ip", "addr", "add", f"{self.ip6}/64", "dev", "eth0", "nodad")
        self.ns.run("ip", "link", "set", "eth0", "up")
        self.ns.run("ip", "route", "add", "default", "via", f"{UNDERLAY_V4}.1")
        self.ns.run("ip", "-6", "route", "add", "default", "via", f"{UNDERLAY_V6}1")
        self.proc = None
        self.start_node(ipv6)

    @property
    def env(self) -> dict[str, str]:
        return {"CALICO_NODENAME": self.name, "CALICO_STATE_DIR": str(self.state_dir),
                "ETCD_ENDPOINTS": self.lab.etcd, "CALICO_IPAM_ADDR": self.lab.ipam,
                "PYTHONPATH": str(ROOT)}

    @property
    def endpoint_addr(self) -> str:
        return f"unix:{self.state_dir}/{self.name}/endpoint.sock"

    def start_node(self, ipv6: bool = True, failpoints: str = "") -> None:
        argv = ["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "services.endpoint",
                "--resync=2"] + ([] if ipv6 else ["--no-ipv6"])
        log = self.state_dir / f"{self.name}.log"
        env = {**self.env, "CALICO_FAILPOINTS": failpoints}
        self.proc = launch.spawn(argv, log, env=env, cwd=ROOT)
        self.lab.procs.append(self.proc)
        launch.wait_until(f"endpoint service of {self.name}",
                          lambda: check_health(self.endpoint_addr), self.proc, log)

    def stop_node(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
            self.proc.wait()
        else:
            launch.stop_pid(self.proc.pid)

    def calicoctl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns.name, sys.executable, "-m",
                               "cli.calicoctl", *args], input=input, capture_output=True,
                              text=True, timeout=60, cwd=ROOT, env={**os.environ, **self.env})

    def add_workload(self, name: str, *ips: str) -> "Workload":
        """A workload namespace networked with ``calicoctl container add``."""
        workload = Workload(self, name)
        for i, ip in enumerate(ips or ("auto",)):
            args = ["container", "add", workload.ref, ip] if i == 0 else \
                ["container", workload.ref, "ip", "add", ip]
            result = self.calicoctl(*args)
            if result.returncode != 0:
                raise AssertionError(f"calicoctl {' '.join(args)} failed: {result.stderr}")
        workload.refresh()
        return workload

    def routes(self, v6: bool = False) -> str:
        return self.ns.run("ip", "-6" if v6 else "-4", "route").stdout


class Workload:
    def __init__(self, host: Host, name: str):
        self.host, self.name = host, name
        self.ns = Namespace(host.lab, f"{host.lab.prefix}-{name}")
        self.ref = f"netns:{self.ns.name}"
        self.ips: list[str] = []
        host.workloads[name] = self

    def refresh(self) -> list[str]:
        """The workload's global addresses, as the kernel has them."""
        out = self.ns.run("ip", "-o", "addr", "show", "scope", "global").stdout
        self.ips = [line.split()[3].split("/")[0] for line in out.splitlines()]
        return self.ips

    @property
    def ip(self) -> str:
        return self.ips[0]

    def ping(self, ip: str, timeout: float = 1) -> bool:
        return self.ns.run("ping", "-c1", f"-W{timeout:g}", ip, check=False).returncode == 0

    def assert_can_ping(self, ip: str, retries: int = 10) -> None:
        for _ in range(retries):
            if self.ping(ip):
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} cannot ping {ip}")

    def assert_cant_ping(self, ip: str, retries: int = 2) -> None:
        for _ in range(retries):
            if self.ping(ip, timeout=0.5):
                raise AssertionError(f"{self.name} can ping {ip}, and should not")

    def delete(self) -> None:
        sh("ip", "netns", "del", self.ns.name, check=False)
        self.host.lab.namespaces.remove(self.ns)


def assert_connectivity(reach: list[tuple[Workload, str]],
                        blocked: list[tuple[Workload, str]] = ()) -> None:
    """Every (workload, address) in ``reach`` pings; none in ``blocked`` does.
    All pairs are checked before failing, so the message shows the whole matrix."""
    wrong = []
    for workload, ip in reach:
        try:
            workload.assert_can_ping(ip)
        except AssertionError as exc:
            wrong.append(str(exc))
    for workload, ip in blocked:
        try:
            workload.assert_cant_ping(ip)
        except AssertionError as exc:
            wrong.append(str(exc))
    assert not wrong, "; ".join(wrong)
