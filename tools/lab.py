"""Simulated hosts and workloads made of real network namespaces (tests, demo, bench).

A ``Lab`` owns everything it creates and removes all of it in ``close()``,
which the fixtures call in ``finally``: node processes are stopped by the PID
we started, namespaces deleted (their interfaces and routes go with them).

Topology: one "underlay" namespace holds a bridge with the router address
(172.30.0.1, fd99::1); each host is a namespace with a veth on that bridge,
its own address and a default route through the router (proxy ARP for
169.254.1.1 only answers when the host has a route off the workload's link).

With ``subnets=2`` there is a second underlay subnet (172.30.1.0/24,
fd99:0:0:1::/64, a second bridge) and a router namespace joining the two
(.253 on each; plain Linux forwarding, no BGP: it knows nothing of the
pools). Hosts and routers say which subnet they are on; every host's default
route then goes through the router's address on its own subnet, and the
control plane (172.30.0.254) has routes to the second subnet through it, so
it stays reachable from both. ``mtu`` sets every underlay link's MTU.
Each host runs, inside its namespace, either the whole node (``calicoctl
node``: endpoint service, BIRD, renderer under the node supervisor) or just
the endpoint service. Nodes reach etcd and the cluster services over unix
sockets, so no IP traffic crosses into the test's own namespace. Workloads are
namespaces given to a host with ``calicoctl container add``, run inside that
host. Routers (a route reflector, an upstream router) are plain BIRDs in
namespaces of their own on the underlay, configured by the caller. A host
may also run a real Docker engine (``tools.docker_engine``), started before
its node so the node finds it; the node is told where it is through
``Host.env``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from string import Template

from calicopy import config, pki
from calicopy.datastore import etcd_auth
from calicopy.datastore.etcd import EtcdStore
from calicopy.node_paths import NodePaths
from calicopy.rpc import check_health
from calicopy.tls import Security, TlsFiles
from node.supervisor import running_pid
from calicopy.netns import socket_in
from tools import docker_engine, launch

ROOT = Path(__file__).resolve().parent.parent  # the repository
UNDERLAY_V4 = "172.30.0"
UNDERLAY_V6 = "fd99::"
# Each underlay subnet's prefixes (IPv4 /24, IPv6 /64), the first being the one above.
SUBNETS = ((UNDERLAY_V4, UNDERLAY_V6), ("172.30.1", "fd99:0:0:1::"))
ROUTER_INDEX = 253                  # the router between subnets, on each of them
CONTROL_INDEX = 254                 # the control plane's address on the underlay
CONTROL_HOSTS = (f"{UNDERLAY_V4}.{CONTROL_INDEX}", f"{UNDERLAY_V6}{CONTROL_INDEX}")
SERVICE_PORTS = {"ipam": 50051, "policy": 50052, "bgp": 50053}
REPLICA_PORT_STEP = 10              # a second replica's port, from the first's
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


class Identities:
    """The lab's certificates (calicopy.pki, issued on first use) and the
    environment that makes a process present one; with no folder, a
    plaintext lab (CALICO_INSECURE=1: every caller is admin)."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def files(self, identity: str, hosts: tuple[str, ...] = ()) -> TlsFiles | None:
        if self.folder is None:
            return None
        pki.ensure(self.folder, {identity: list(hosts)})
        return TlsFiles(pki.paths(self.folder, pki.CA_NAME)[0], *pki.paths(self.folder, identity))

    def env(self, identity: str, hosts: tuple[str, ...] = ()) -> dict[str, str]:
        """CALICO_TLS_* and ETCD_*_FILE for ``identity``."""
        files = self.files(identity, hosts)
        if files is None:
            return {"CALICO_INSECURE": "1"}
        return {"CALICO_TLS_CA_FILE": str(files.ca), "CALICO_TLS_CERT_FILE": str(files.cert),
                "CALICO_TLS_KEY_FILE": str(files.key), "ETCD_CA_CERT_FILE": str(files.ca),
                "ETCD_CERT_FILE": str(files.cert), "ETCD_KEY_FILE": str(files.key)}

    def security(self, identity: str) -> Security:
        return Security(self.files(identity), insecure=self.folder is None)


class Lab:
    """Simulated hosts on an underlay, and a control plane of their own:
    the IPAM, policy and BGP services in a namespace of the underlay
    (``CONTROL_INDEX``), reached by the hosts over TCP (mutual TLS with
    ``pki``, else plaintext) and by this process over unix sockets. With
    ``replicas=2``, each service runs twice (the second on its port plus
    REPLICA_PORT_STEP), and the addresses the hosts are given name both;
    ``kill_service`` and ``start_service`` stop and start one replica;
    ``service_args`` gives a service's replicas more arguments (e.g. IPAM's
    ``--gc-grace``). They share ``etcd`` (an ETCD_ENDPOINTS value reachable from any namespace:
    unix sockets, one per member) with whatever else uses it."""

    def __init__(self, tmp: Path, etcd: str, pki_dir: Path | None = None, prefix: str = "",
                 replicas: int = 1, subnets: int = 1, mtu: int = 1500,
                 service_args: dict[str, list[str]] | None = None):
        self.tmp, self.etcd, self.replicas = tmp, etcd, replicas
        self.service_args = dict(service_args or {})
        self.subnets, self.mtu = subnets, mtu
        self.identities = Identities(pki_dir)
        self.prefix = prefix or f"cp{os.getpid() % 100000}x{next(_counter)}"
        self.namespaces: list[Namespace] = []
        self.procs: list[subprocess.Popen] = []
        self.engines: list[docker_engine.Engine] = []
        self.hosts: dict[str, Host] = {}
        try:
            self.underlay = Namespace(self, f"{self.prefix}-u")
            u = self.underlay
            for n in range(subnets):
                u.run("ip", "link", "add", f"br{n}", "mtu", str(mtu), "type", "bridge")
                u.run("ip", "link", "set", f"br{n}", "up")
            u.run("ip", "addr", "add", f"{UNDERLAY_V4}.1/24", "dev", "br0")
            u.run("ip", "addr", "add", f"{UNDERLAY_V6}1/64", "dev", "br0", "nodad")
            if subnets > 1:
                self.router = Namespace(self, f"{self.prefix}-rt")
                for n in range(subnets):
                    self._underlay_link(self.router, ROUTER_INDEX, n, f"eth{n}", gateway=False)
                self.router.run("sysctl", "-qw", "net.ipv4.ip_forward=1",
                                "net.ipv6.conf.all.forwarding=1")
            self._start_control_plane()
        except BaseException:
            self.close()
            raise

    def _start_control_plane(self) -> None:
        self.control = Namespace(self, f"{self.prefix}-ctl")
        self.control_ip, _ = self._underlay_link(self.control, CONTROL_INDEX)
        for v4, v6 in SUBNETS[1:self.subnets]:       # the other subnets, through the router
            self.control.run("ip", "route", "add", f"{v4}.0/24", "via",
                             f"{UNDERLAY_V4}.{ROUTER_INDEX}")
            self.control.run("ip", "-6", "route", "add", f"{v6}/64", "via",
                             f"{UNDERLAY_V6}{ROUTER_INDEX}")
        self.control_dir = self.tmp / "control"
        self.control_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.control_dir, 0o700)
        self.services: dict[tuple[str, int], subprocess.Popen] = {}
        self.addrs, self.unix = {}, {}
        for name in SERVICE_PORTS:
            replicas = range(1, self.replicas + 1)
            self.addrs[name] = ",".join(self._replica_addrs(name, r)[0] for r in replicas)
            self.unix[name] = ",".join(self._replica_addrs(name, r)[1] for r in replicas)
        starting = [(name, r, self._spawn_service(name, r))
                    for name in SERVICE_PORTS for r in range(1, self.replicas + 1)]
        for name, r, proc in starting:
            self._wait_service(name, r, proc)

    def _replica_addrs(self, name: str, replica: int) -> tuple[str, str]:
        """(TCP address, unix socket) of one replica of a service."""
        port = SERVICE_PORTS[name] + REPLICA_PORT_STEP * (replica - 1)
        stem = name if replica == 1 else f"{name}-{replica}"
        return f"{self.control_ip}:{port}", f"unix:{self.control_dir}/{stem}.sock"

    def _spawn_service(self, name: str, replica: int) -> subprocess.Popen:
        tcp, unix = self._replica_addrs(name, replica)
        Path(unix[len("unix:"):]).unlink(missing_ok=True)     # left by a killed replica
        env = self.identities.env(f"service:{name}", CONTROL_HOSTS)
        argv = ["ip", "netns", "exec", self.control.name, sys.executable, "-m",
                f"services.{name}", f"--listen={tcp},{unix}", f"--etcd-endpoints={self.etcd}",
                *self.service_args.get(name, ())]
        proc = launch.spawn(argv, self._service_log(name, replica), env=env, cwd=ROOT)
        self.procs.append(proc)
        self.services[name, replica] = proc
        return proc

    def _service_log(self, name: str, replica: int) -> Path:
        return self.control_dir / (f"{name}.log" if replica == 1 else f"{name}-{replica}.log")

    def _wait_service(self, name: str, replica: int, proc: subprocess.Popen) -> None:
        unix = self._replica_addrs(name, replica)[1]
        launch.wait_until(f"the lab's {name} service (replica {replica})",
                          lambda: check_health(unix), proc, self._service_log(name, replica))

    def kill_service(self, name: str, replica: int = 1) -> None:
        """SIGKILL one replica of a service, as a crash would."""
        proc = self.services[name, replica]
        proc.kill()
        proc.wait()

    def start_service(self, name: str, replica: int = 1, wait: bool = True
                      ) -> subprocess.Popen:
        """Start a replica that was killed again; with ``wait``, return once it
        answers."""
        proc = self._spawn_service(name, replica)
        if wait:
            self._wait_service(name, replica, proc)
        return proc

    @property
    def ipam(self) -> str:
        """The IPAM service as hosts reach it: TCP on the underlay."""
        return self.addrs["ipam"]

    @property
    def policy(self) -> str:
        return self.addrs["policy"]

    @property
    def bgp(self) -> str:
        return self.addrs["bgp"]

    def admin_store(self) -> EtcdStore:
        """etcd as the operator (admin); close it after use."""
        files = self.identities.files("admin")
        return EtcdStore(config.parse_endpoints(self.etcd), tls=files)

    def ensure_etcd_user(self, node: str) -> None:
        """What `calicoctl node` does for a node: its own etcd user."""
        if self.identities.folder is None:
            return
        store = self.admin_store()
        try:
            etcd_auth.ensure_node(store, node)
        finally:
            store.close()

    def add_host(self, name: str, ipv6: bool = True, node: bool = False,
                 as_num: int = 0, docker: bool = False, etcd: str = "", subnet: int = 0,
                 node_args: tuple[str, ...] = ()) -> "Host":
        """A host; with ``node`` it runs ``calicoctl node`` (BGP and all; with
        ``node_args`` added), else only the endpoint service; with ``docker``,
        a Docker engine too; on underlay ``subnet`` (0 or, in a two-subnet
        lab, 1); ``etcd``: how it reaches etcd, if not as the lab does
        (``etcd_on_underlay``)."""
        index = sum(1 for h in self.hosts.values() if h.subnet == subnet) + 2
        host = Host(self, name, index, ipv6, node, as_num, docker, etcd, subnet, node_args)
        self.hosts[name] = host
        return host

    def etcd_on_underlay(self, port: int = 2379) -> str:
        """etcd offered on the underlay too, at the control plane's address (a
        relay to its unix socket, tools.relay): traffic a filter can drop, where
        the unix socket cannot be cut. Returns the ETCD_ENDPOINTS entry."""
        ip = CONTROL_HOSTS[0]
        path = self.etcd.split(":", 1)[1]
        proc = launch.spawn(["ip", "netns", "exec", self.control.name, sys.executable, "-m",
                             "tools.relay", f"{ip}:{port}", path],
                            self.tmp / "control" / "etcd-relay.log", cwd=ROOT)
        self.procs.append(proc)
        launch.wait_until("the etcd relay", lambda: bool(self.control.run(
            "ss", "-Hltn", f"sport = :{port}").stdout.strip()), proc,
            self.tmp / "control" / "etcd-relay.log")
        scheme = "https" if self.etcd.startswith("unixs:") else "http"
        return f"{scheme}://{ip}:{port}"

    def add_router(self, name: str, index: int, bird_conf: str, subnet: int = 0) -> "Router":
        return Router(self, name, index, bird_conf, subnet)

    def _underlay_link(self, ns: "Namespace", index: int, subnet: int = 0, dev: str = "eth0",
                       gateway: bool = True) -> tuple[str, str]:
        """Put ``ns`` on underlay ``subnet`` as .<index>; returns its IPv4 and IPv6."""
        v4, v6 = SUBNETS[subnet]
        ip, ip6 = f"{v4}.{index}", f"{v6}{index}"
        peer = f"{self.prefix}{'' if subnet == 0 else f's{subnet}-'}{index}"[-15:]
        sh("ip", "link", "add", dev, "mtu", str(self.mtu), "netns", ns.name, "type", "veth",
           "peer", "name", peer, "mtu", str(self.mtu), "netns", self.underlay.name)
        self.underlay.run("ip", "link", "set", peer, "master", f"br{subnet}", "up")
        ns.run("ip", "addr", "add", f"{ip}/24", "dev", dev)
        ns.run("ip", "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
        ns.run("ip", "link", "set", dev, "up")
        if gateway:     # through the router between subnets, when there is one
            last = ROUTER_INDEX if self.subnets > 1 else 1
            ns.run("ip", "route", "add", "default", "via", f"{v4}.{last}")
            ns.run("ip", "-6", "route", "add", "default", "via", f"{v6}{last}")
        return ip, ip6

    @staticmethod
    def remove_leftovers(prefix: str) -> None:
        """Delete the Docker engines and namespaces a killed run with this
        fixed prefix left behind."""
        docker_engine.remove_leftovers(prefix)
        for line in sh("ip", "netns", "list").stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(f"{prefix}-"):
                sh("ip", "netns", "del", name, check=False)

    def close(self) -> None:
        # Containers go while the nodes still run, so their plugin can release
        # what it gave them; engines stop once nothing calls them any more.
        for engine in self.engines:
            engine.remove_containers()
        for host in self.hosts.values():
            host.stop_node()
        for proc in reversed(self.procs):
            launch.stop_pid(proc.pid)
        # In parallel: a dockerd takes about a second to stop.
        closing = [threading.Thread(target=engine.close) for engine in self.engines]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns.name, check=False)


class Host:
    """A simulated host: a namespace on the underlay running its own node
    (and, if asked, its own Docker engine)."""

    def __init__(self, lab: Lab, name: str, index: int, ipv6: bool, node: bool, as_num: int,
                 docker: bool = False, etcd: str = "", subnet: int = 0,
                 node_args: tuple[str, ...] = ()):
        self.lab, self.name, self.ipv6, self.as_num = lab, name, ipv6, as_num
        self.etcd = etcd or lab.etcd
        self.subnet, self.node_args = subnet, tuple(node_args)
        self.ns = Namespace(lab, f"{lab.prefix}-{name}")
        self.state_dir = lab.tmp / "state"
        self.workloads: dict[str, Workload] = {}
        self.ip, self.ip6 = lab._underlay_link(self.ns, index, subnet)
        self.proc = None
        self.is_node = node
        self.engine: docker_engine.Engine | None = None
        if docker:
            # Before the node: the node detects the engine and serves its plugin.
            self.engine = docker_engine.Engine(f"{lab.prefix}-{name}", self.ns.name,
                                               self.state_dir / f"{name}.dockerd.log")
            lab.engines.append(self.engine)
        if node:
            self.start_calico_node()
        else:
            self.start_node(ipv6)

    @property
    def env(self) -> dict[str, str]:
        """What `calicoctl` on this host runs with: the operator's identity
        (admin), the services on the underlay, and the node's own certificate
        for `calicoctl node` to give its processes."""
        env = {"CALICO_NODENAME": self.name, "CALICO_STATE_DIR": str(self.state_dir),
               "ETCD_ENDPOINTS": self.etcd, "CALICO_IPAM_ADDR": self.lab.ipam,
               "CALICO_BGP_ADDR": self.lab.bgp, "CALICO_POLICY_ADDR": self.lab.policy,
               "PYTHONPATH": str(ROOT), **self.lab.identities.env("admin")}
        node = self.lab.identities.files(f"node:{self.name}", (self.ip, self.ip6))
        if node is not None:
            env.update(CALICO_NODE_TLS_CERT_FILE=str(node.cert),
                       CALICO_NODE_TLS_KEY_FILE=str(node.key))
        if self.engine is not None:
            env.update(DOCKER_HOST=self.engine.url,
                       CALICO_DOCKER_PLUGIN_DIR=str(self.engine.plugin_dir))
        return env

    @property
    def node_env(self) -> dict[str, str]:
        """What the node's own processes run with: its identity, node:<name>."""
        return {**self.env, **self.lab.identities.env(f"node:{self.name}", (self.ip, self.ip6))}

    def _engine(self) -> docker_engine.Engine:
        if self.engine is None:
            raise RuntimeError(f"host {self.name} has no Docker engine (add_host(docker=True))")
        return self.engine

    def docker(self, *args: str, check: bool = True, timeout: float = 60,
               input: str | None = None) -> subprocess.CompletedProcess:
        """``docker`` against this host's engine; raises DockerError (with
        stderr) on failure when ``check``."""
        return self._engine().docker(*args, check=check, timeout=timeout, input=input)

    def container_pid(self, container: str) -> int:
        """The host PID of a running container's first process."""
        return self._engine().container_pid(container)

    def container_netns(self, container: str) -> str:
        """``/proc/<pid>/ns/net`` of a running container."""
        return self._engine().container_netns(container)

    @property
    def paths(self) -> NodePaths:
        """The node's state folder (sockets, pids, logs)."""
        return NodePaths(self.state_dir, self.name)

    def start_calico_node(self, failpoints: str = "") -> subprocess.CompletedProcess:
        """`calicoctl node` on this host (its processes stop at ``failpoints``)."""
        args = ["node", f"--ip={self.ip}"] + ([f"--ip6={self.ip6}"] if self.ipv6 else []) + \
            ([f"--as={self.as_num}"] if self.as_num else []) + list(self.node_args)
        result = self.calicoctl(*args, env={"CALICO_FAILPOINTS": failpoints})
        if result.returncode != 0:
            raise AssertionError(f"calicoctl node on {self.name} failed: {result.stderr}")
        self.node_output = result.stdout        # what `calicoctl node` printed, last time
        return result

    def supervisor_pid(self) -> int | None:
        return running_pid(self.paths.pid, self.name)

    def child_pid(self, name: str) -> int | None:
        status = json.loads(self.paths.status.read_text())
        return status["children"][name]["pid"]

    @property
    def endpoint_addr(self) -> str:
        return self.paths.endpoint_addr

    def start_node(self, ipv6: bool = True, failpoints: str = "") -> None:
        argv = ["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "services.endpoint",
                "--resync=2"] + ([] if ipv6 else ["--no-ipv6"])
        log = self.state_dir / f"{self.name}.log"
        self.lab.ensure_etcd_user(self.name)
        env = {**self.node_env, "CALICO_FAILPOINTS": failpoints}
        self.proc = launch.spawn(argv, log, env=env, cwd=ROOT)
        self.lab.procs.append(self.proc)
        launch.wait_until(f"endpoint service of {self.name}",
                          lambda: check_health(self.endpoint_addr), self.proc, log)

    def stop_node(self, kill: bool = False) -> None:
        """Stop this host's processes (the supervisor and all it runs, or the
        endpoint service alone), by the PIDs we started."""
        pid = self.supervisor_pid() if self.is_node else None
        if pid:
            launch.stop_pid(pid, timeout=15)
            try:
                os.killpg(pid, 9)           # anything of its group still there
            except ProcessLookupError:
                pass
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
            self.proc.wait()
        else:
            launch.stop_pid(self.proc.pid)

    def crash_node(self) -> None:
        """Kill the node's supervisor and everything it runs at once, as a
        crash or an OOM kill would."""
        pid = self.supervisor_pid()
        if pid:
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass

    def calicoctl(self, *args: str, input: str | None = None, env: dict | None = None
                  ) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns.name, sys.executable, "-m",
                               "cli.calicoctl", *args], input=input, capture_output=True,
                              text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, **self.env, **(env or {})})

    def add_workload(self, name: str, *ips: str, profiles: tuple[str, ...] = ()) -> "Workload":
        """A workload namespace networked with ``calicoctl container add``, then
        made a member of ``profiles`` with ``calicoctl profile <P> member add``."""
        workload = Workload(self, name)
        steps = [["container", "add", workload.ref, ip] if i == 0 else
                 ["container", workload.ref, "ip", "add", ip]
                 for i, ip in enumerate(ips or ("auto",))]
        steps += [["profile", p, "member", "add", workload.ref] for p in profiles]
        for args in steps:
            result = self.calicoctl(*args)
            if result.returncode != 0:
                raise AssertionError(f"calicoctl {' '.join(args)} failed: {result.stderr}")
        workload.refresh()
        return workload

    def routes(self, v6: bool = False) -> str:
        return self.ns.run("ip", "-6" if v6 else "-4", "route").stdout


class Router:
    """A plain BIRD on the underlay, configured by the test (not calico-py);
    ``$ip`` and ``$ip6`` in its configuration become its addresses."""

    def __init__(self, lab: Lab, name: str, index: int, bird_conf: str, subnet: int = 0):
        self.lab, self.name = lab, name
        self.ns = Namespace(lab, f"{lab.prefix}-{name}")
        self.ip, self.ip6 = lab._underlay_link(self.ns, index, subnet)
        folder = lab.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        self.conf, self.ctl = folder / "bird.conf", folder / "bird.ctl"
        self.conf.write_text(Template(bird_conf).substitute(ip=self.ip, ip6=self.ip6))
        sh("bird", "-p", "-c", str(self.conf))
        proc = launch.spawn(["ip", "netns", "exec", self.ns.name, "bird", "-f", "-c",
                             str(self.conf), "-s", str(self.ctl)], folder / "bird.log")
        lab.procs.append(proc)
        launch.wait_until(f"BIRD of {name}", self.ctl.exists, proc, folder / "bird.log")

    def birdc(self, *args: str) -> str:
        return sh("birdc", "-s", str(self.ctl), *args).stdout

    def routes(self, v6: bool = False) -> str:
        return self.ns.run("ip", "-6" if v6 else "-4", "route").stdout


class _Reachable:
    """Ping and TCP from inside a network namespace (``self.ns.path``)."""

    name: str

    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net={self.ns.path}", *argv], capture_output=True,
                              text=True, check=check, timeout=30)

    def ping(self, ip: str, timeout: float = 1) -> bool:
        return self.run("ping", "-c1", f"-W{timeout:g}", ip).returncode == 0

    def ping_from(self, source: str, ip: str, timeout: float = 1) -> bool:
        """Ping with a chosen source address (which may not be ours)."""
        return self.run("ping", "-c1", f"-W{timeout:g}", "-I", source, ip).returncode == 0

    def tcp_connect(self, ip: str, port: int, timeout: float = 1.0) -> bool:
        """A TCP connection from inside the workload: True if accepted."""
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket_in(self.ns.path, family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect((ip, port))
                return True
            except OSError:
                return False

    def tcp_listen(self, port: int, v6: bool = False) -> "Listener":
        return Listener(self, port, v6)

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


class Workload(_Reachable):
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

    def delete(self) -> None:
        sh("ip", "netns", "del", self.ns.name, check=False)
        self.host.lab.namespaces.remove(self.ns)


class Container(_Reachable):
    """A Docker container on a host's engine, started with ``docker run -d``."""

    def __init__(self, host: Host, name: str, network: str, *run_args: str,
                 command: tuple[str, ...] = ("sleep", "86400")):
        self.host, self.name, self.network = host, name, network
        host.docker("run", "-d", "--name", name, "--net", network, *run_args,
                    docker_engine.IMAGE, *command)
        self.ips: list[str] = []
        self.refresh()

    @property
    def ns(self):
        return _Path(self.host.container_netns(self.name))

    def refresh(self) -> list[str]:
        """The addresses Docker reports for the container on its network."""
        info = json.loads(self.host.docker("inspect", self.name).stdout)[0]
        net = info["NetworkSettings"]["Networks"].get(self.network, {})
        self.ips = [ip for ip in (net.get("IPAddress"), net.get("GlobalIPv6Address")) if ip]
        return self.ips

    @property
    def ip(self) -> str:
        return self.ips[0]


class _Path:
    def __init__(self, path: str):
        self.path = path


class Listener:
    """A TCP server inside a workload that accepts and echoes, in a thread."""

    def __init__(self, workload: _Reachable, port: int, v6: bool):
        family = socket.AF_INET6 if v6 else socket.AF_INET
        self.sock = socket_in(workload.ns.path, family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::" if v6 else "0.0.0.0", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conns = []
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                conn.settimeout(0.2)
                conns.append(conn)
            except OSError:
                pass
            for conn in list(conns):
                try:
                    data = conn.recv(4096)
                    if data:
                        conn.sendall(data)
                    else:
                        conns.remove(conn)
                        conn.close()
                except socket.timeout:
                    continue
                except OSError:
                    conns.remove(conn)
        for conn in conns:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
