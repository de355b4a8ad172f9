"""Chaos: workloads come and go on three nodes while, one after another, every
part of the cluster is killed; once it quiesces, nothing is duplicated,
leaked, half made or wrongly reachable.

The cluster: a 3-member etcd of its own (TLS, etcd's authentication on, the
members' certificates from the session's PKI; reached over the members' unix
sockets), a control plane running two replicas of IPAM, policy and BGP
(tools.lab, IPAM's garbage collector with a short grace so that what only it
repairs converges within the test), and three hosts running the whole node,
the third with a Docker engine. One pool; two profiles, ``red`` and
``blue`` (members reach members, nothing else gets in).

Churn: workers add and remove workloads continuously, about ``RATE``
operations a second in all: ``calicoctl container add/remove`` (then
``profile <P> member add``) on two hosts, CNI ADD/DEL (cni/invoke.py, the
network named after the profile) on two, ``docker run/rm`` on networks
named after the profiles on the Docker host. Each keeps between
``MIN_LIVE`` and ``MAX_LIVE`` workloads of its own.

Faults, in turn, each at a random moment of its slot of the run: the etcd
leader, another member, an IPAM replica, a policy replica, and on a node (at
random) its policy agent, endpoint service, BIRD renderer and BIRD, and the
Docker plugin. All are SIGKILLed by the PID we (or the node's supervisor,
which restarts node processes) started; the test restarts what it killed in
the control plane later in the slot.

Operations that fail meanwhile are expected and recorded (a failed remove is
retried until it succeeds, as a user would); after the churn and the faults
stop, and everything runs again, the test waits (on conditions, with a
deadline) for the cluster to converge and asserts:

- no duplicate address: across endpoint records, workloads' kernels and
  hosts' routes, each address once;
- no leak: the addresses allocated are exactly the live workloads', each to
  its own endpoint, and ``calicoctl ipam check`` is clean (its endpoint
  cross-checks included);
- nothing half made: every endpoint record active (not awaiting its
  policy) and owned by a live workload, every host's ``cali`` interfaces exactly its records', no
  Docker ``tmp`` veth left waiting, and an add that failed left nothing
  (no record, no address, no interface in its namespace);
- the connectivity matrix over a sample of live workloads of both profiles
  (each kind and host): members of a profile reach each other, nobody else;
- etcd's database below ``DB_BASE + DB_PER_OPERATION`` per operation made.

Knobs (environment): ``CHAOS_SECONDS`` (how long the churn and faults run,
default ``SECONDS``; `make chaos` runs 300), ``CHAOS_SEED`` (fixed by
default, printed; the choices of operations, victims and moments follow
from it, though threads' timing does not). A summary (operations, failures
by kind, kills) is printed, and is part of any failure's message.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import random
import re
import signal
import subprocess
import threading
import time

import pytest

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import rpc
from calicopy.datastore import keys
from calicopy.model.endpoint import ACTIVE, DOCKER_IPAM_HANDLES_LABEL, Endpoint
from calicopy.model.ipam import Block
from cni.invoke import Chain, ChainError
from tests.conftest import ROOT, identity_files
from tests.system.helpers import established
from tools import launch
from tools.docker_engine import IMAGE
from tools.lab import Host, Lab, Workload

SECONDS = float(os.environ.get("CHAOS_SECONDS", "40"))
SEED = int(os.environ.get("CHAOS_SEED", "1313"))
RATE = 3.0                      # operations per second, all workers together
MIN_LIVE, MAX_LIVE = 1, 4       # workloads each worker keeps
POOL = "10.70.0.0/16"
PROFILES = ("red", "blue")
GC_INTERVAL, GC_GRACE = 2, 15   # IPAM's collector: grace above any add's deadline (10 s)
CONVERGE = 180.0                # seconds to converge once quiet (a reconcile is every 60 s)
SAMPLE = 4                      # workloads per profile in the connectivity matrix
DB_BASE = 8 << 20               # etcd's database: bytes, plus per operation made
DB_PER_OPERATION = 64 << 10
CNI_PATH = [str(ROOT / "cni" / "bin"), "/usr/lib/cni"]
SLOT = 4.5                      # seconds per kill, about: a long run repeats KILLS
KILLS = ("etcd leader", "etcd member", "ipam replica", "policy replica", "policy agent",
         "endpoint service", "bird renderer", "bird", "docker plugin")


# What happened ---------------------------------------------------------------------------

class Ledger:
    """Operations (by kind, and their failures by message), kills and
    events, from every thread; ``summary()`` says it all."""

    def __init__(self, start: float):
        self.start = start
        self.lock = threading.Lock()
        self.ops = collections.Counter()
        self.seconds = collections.defaultdict(list)
        self.failures = collections.Counter()
        self.kills: list[str] = []

    def now(self) -> str:
        return f"{time.monotonic() - self.start:6.1f}s"

    def op(self, kind: str, ok: bool, error: str = "", seconds: float = 0.0) -> None:
        with self.lock:
            self.ops[kind, ok] += 1
            self.seconds[kind].append(seconds)
            if not ok:
                self.failures[kind, _kind_of(error)] += 1

    def kill(self, what: str) -> None:
        line = self.say(what)
        with self.lock:
            self.kills.append(line)

    def say(self, what: str) -> str:
        line = f"{self.now()} {what}"
        print(f"chaos: {line}", flush=True)
        return line

    @property
    def made(self) -> int:
        return sum(self.ops.values())

    def summary(self) -> str:
        with self.lock:
            kinds = sorted({k for k, _ in self.ops})
            lines = [f"chaos seed {SEED}, {SECONDS:g}s: {self.made} operations"]
            lines += [f"  {k}: {self.ops[k, True]} ok, {self.ops[k, False]} failed; "
                      f"{_spread(self.seconds[k])}" for k in kinds]
            lines.append("failures by kind:")
            lines += [f"  {n} x {kind}: {why}" for (kind, why), n in
                      sorted(self.failures.items(), key=lambda i: -i[1])] or ["  none"]
            lines.append("kills:")
            lines += [f"  {k}" for k in self.kills]
        return "\n".join(lines)


def _spread(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return f"median {ordered[len(ordered) // 2]:.1f}s, max {ordered[-1]:.1f}s" if ordered \
        else ""


def _kind_of(error: str) -> str:
    """An error's message with what varies (ids, addresses, numbers) blanked,
    so that failures group by kind."""
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else "(no message)"
    text = re.sub(r"[0-9a-f]{12,}", "<id>", text)
    text = re.sub(r"\b\d+(\.\d+)+(/\d+)?\b", "<n>", text)
    text = re.sub(r"\d+", "<n>", text)
    return text[:160]


# Workloads -------------------------------------------------------------------------------

@dataclasses.dataclass
class Tracked:
    """A workload a worker made (or tried to), and what it knows of it."""

    kind: str                       # "calicoctl", "cni" or "docker"
    host: Host
    name: str
    profile: str
    state: str = "adding"           # live, failed (its add), removing (failed once), gone
    profile_set: bool = False       # the operation that sets its profile succeeded
    workload: Workload | None = None    # its namespace (calicoctl, CNI)
    chain: Chain | None = None          # CNI: its network's configuration list

    @property
    def netns(self) -> str:
        if self.kind == "docker":
            return self.host.container_netns(self.name)
        return self.workload.ns.path

    def kernel_ips(self) -> list[str]:
        out = subprocess.run(["nsenter", f"--net={self.netns}", "ip", "-o", "addr", "show",
                              "scope", "global"], capture_output=True, text=True, timeout=30)
        return [line.split()[3].split("/")[0] for line in out.stdout.splitlines()]

    def links(self) -> list[str]:
        """Interfaces in its namespace other than lo."""
        out = subprocess.run(["nsenter", f"--net={self.netns}", "ip", "-o", "link"],
                             capture_output=True, text=True, timeout=30).stdout
        return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines()
                if ln.split(":")[1].strip() != "lo"]

    def __str__(self) -> str:
        return f"{self.kind} workload {self.name} on {self.host.name} ({self.state})"


def _run(fn, *args, **kw) -> tuple[bool, str]:
    """(succeeded, what it said) of a command that returns a CompletedProcess."""
    try:
        result = fn(*args, **kw)
    except subprocess.TimeoutExpired as exc:
        return False, f"timed out after {exc.timeout:g}s"
    return result.returncode == 0, result.stderr or result.stdout


class Worker(threading.Thread):
    """Adds and removes workloads of one kind on one host until ``stop``."""

    def __init__(self, kind: str, host: Host, ledger: Ledger, stop: threading.Event,
                 rng: random.Random, interval: float, tag: str,
                 chains: dict[str, Chain] | None = None):
        super().__init__(name=f"chaos-{kind}-{host.name}", daemon=True)
        self.kind, self.host, self.ledger, self.stop = kind, host, ledger, stop
        self.rng, self.interval, self.tag = rng, interval, tag
        self.chains = chains or {}      # CNI: each profile's network
        self.made: list[Tracked] = []
        self.count = 0
        self.error: BaseException | None = None

    def live(self) -> list[Tracked]:
        return [t for t in self.made if t.state in ("live", "removing")]

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                began = time.monotonic()
                self.step()
                self.stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        except BaseException as exc:        # a bug of the test itself: the test fails
            self.error = exc

    def step(self) -> None:
        live = self.live()
        retry = [t for t in live if t.state == "removing"]
        if retry:
            self.remove(retry[0])
        elif len(live) < MIN_LIVE or (len(live) < MAX_LIVE and self.rng.random() < 0.55):
            self.count += 1
            self.add(Tracked(self.kind, self.host, f"{self.tag}{self.count}",
                             self.rng.choice(PROFILES)))
        else:
            self.remove(self.rng.choice(live))

    def add(self, t: Tracked) -> None:
        self.made.append(t)
        began, took = time.monotonic(), None
        if self.kind == "docker":
            ok, said = _run(self.host.docker, "run", "-d", "--name", t.name, "--net",
                            t.profile, IMAGE, "sleep", "86400", check=False)
            t.profile_set = ok
            if not ok:      # a container Docker made but could not start: gone with it
                _run(self.host.docker, "rm", "-f", t.name, check=False)
        elif self.kind == "cni":
            t.workload, t.chain = Workload(self.host, t.name), self.chains[t.profile]
            try:
                t.chain.add(t.name, t.netns)
                ok, said = True, ""
            except ChainError as exc:
                ok, said = False, str(exc.outcome.output or exc.outcome.stderr)
            t.profile_set = ok
        else:
            t.workload = Workload(self.host, t.name)
            ok, said = _run(self.host.calicoctl, "container", "add", t.workload.ref, "auto")
            took = time.monotonic() - began     # the profile's operation is counted apart
            if ok:
                set_began = time.monotonic()
                set_ok, set_said = _run(self.host.calicoctl, "profile", t.profile, "member",
                                        "add", t.workload.ref)
                self.ledger.op("calicoctl member add", set_ok, set_said,
                               time.monotonic() - set_began)
                t.profile_set = set_ok
        t.state = "live" if ok else "failed"
        self.ledger.op(f"{self.kind} add", ok, said,
                       took if took is not None else time.monotonic() - began)

    def remove(self, t: Tracked) -> None:
        began = time.monotonic()
        if self.kind == "docker":
            ok, said = _run(self.host.docker, "rm", "-f", t.name, check=False)
        elif self.kind == "cni":
            failed = t.chain.delete(t.name, t.netns)
            ok, said = not failed, "; ".join(str(f.output or f.stderr) for f in failed)
        else:
            ok, said = _run(self.host.calicoctl, "container", "remove", t.workload.ref)
            if not ok and t.state == "removing" and "doesn't contain any endpoints" in said:
                ok = True           # the first try did remove it, and lost the answer
        self.ledger.op(f"{self.kind} remove", ok, said, time.monotonic() - began)
        if ok:
            t.state = "gone"
            if t.workload is not None:
                t.workload.delete()
        else:
            t.state = "removing"


# Faults ----------------------------------------------------------------------------------

class Monkey(threading.Thread):
    """Kills KILLS in turn, each at a random moment of its slot of the run
    (round after round in a long run); what it killed in the control plane
    it starts again later in the slot."""

    def __init__(self, cluster: launch.EtcdCluster, lab: Lab, hosts: list[Host],
                 docker_host: Host, ledger: Ledger, rng: random.Random, start: float,
                 seconds: float, stop: threading.Event):
        super().__init__(name="chaos-monkey", daemon=True)
        self.cluster, self.lab, self.hosts, self.docker_host = cluster, lab, hosts, docker_host
        self.ledger, self.rng, self.stop = ledger, rng, stop
        # As many rounds of KILLS as fit SLOT-long slots in the run (at least one).
        self.rounds = max(1, round(seconds / (SLOT * len(KILLS))))
        self.slot = seconds / (self.rounds * len(KILLS))
        self.start_at = start
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n, what in enumerate(KILLS * self.rounds):
                slot = self.start_at + n * self.slot
                self._until(slot + self.rng.uniform(0.05, 0.5) * self.slot)
                back = slot + self.rng.uniform(0.6, 0.9) * self.slot
                getattr(self, "_" + what.replace(" ", "_"))(back)
        except BaseException as exc:
            self.error = exc

    def _until(self, moment: float) -> None:
        self.stop.wait(max(0.0, moment - time.monotonic()))

    def _etcd(self, member, back: float, role: str = "member") -> None:
        self.ledger.kill(f"etcd {role} {member.name} (pid {member.proc.pid})")
        self.cluster.kill(member)
        self._until(back)
        self.cluster.restart(member)
        self.ledger.kill(f"  etcd member {member.name} back (pid {member.proc.pid})")

    def _etcd_leader(self, back: float) -> None:
        self._etcd(self.cluster.leader(), back, "leader")

    def _etcd_member(self, back: float) -> None:
        leader = self.cluster.leader()
        self._etcd(self.rng.choice([m for m in self.cluster.members if m is not leader]), back)

    def _replica(self, service: str, back: float) -> None:
        replica = self.rng.choice(range(1, self.lab.replicas + 1))
        pid = self.lab.services[service, replica].pid
        self.ledger.kill(f"{service} replica {replica} (pid {pid})")
        self.lab.kill_service(service, replica)
        self._until(back)
        proc = self.lab.start_service(service, replica)
        self.ledger.kill(f"  {service} replica {replica} back (pid {proc.pid})")

    def _ipam_replica(self, back: float) -> None:
        self._replica("ipam", back)

    def _policy_replica(self, back: float) -> None:
        self._replica("policy", back)

    def _node_child(self, host: Host, child: str) -> None:
        deadline = time.monotonic() + 30
        while (pid := host.child_pid(child)) is None:      # restarting just now
            assert time.monotonic() < deadline, f"{child} of {host.name} never runs"
            time.sleep(0.1)
        self.ledger.kill(f"{child} of {host.name} (pid {pid})")
        os.kill(pid, signal.SIGKILL)

    def _policy_agent(self, back: float) -> None:
        self._node_child(self.rng.choice(self.hosts), "policy agent")

    def _endpoint_service(self, back: float) -> None:
        self._node_child(self.rng.choice(self.hosts), "endpoint service")

    def _bird_renderer(self, back: float) -> None:
        self._node_child(self.rng.choice(self.hosts), "bird renderer")

    def _bird(self, back: float) -> None:
        self._node_child(self.rng.choice(self.hosts), "bird")

    def _docker_plugin(self, back: float) -> None:
        self._node_child(self.docker_host, "docker plugin")


# The cluster -----------------------------------------------------------------------------

@pytest.fixture
def chaos_lab(pki_dir, tmp_path):
    cluster = launch.EtcdCluster(tmp_path / "etcd", 3,
                                 tls=identity_files(pki_dir, "service:etcd"),
                                 admin=identity_files(pki_dir, "admin"))
    lab = None
    try:
        lab = Lab(tmp_path / "lab", cluster.unix_endpoints, pki_dir, replicas=2,
                  service_args={"ipam": [f"--gc-interval={GC_INTERVAL}",
                                         f"--gc-grace={GC_GRACE}"]})
        with rpc.channel(lab.unix["ipam"]) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr=POOL)), timeout=30)
        with rpc.channel(lab.unix["policy"]) as ch:
            for name in PROFILES:
                policy_pb2_grpc.PolicyServiceStub(ch).CreateProfile(
                    policy_pb2.CreateProfileRequest(name=name), timeout=30)
        for name in ("c1", "c2"):
            lab.add_host(name, node=True)
        docker_host = lab.add_host("c3", node=True, docker=True)
        for name in PROFILES:
            docker_host.docker("network", "create", "--driver", "calico", "--ipam-driver",
                               "calico-ipam", name)
        yield cluster, lab
    finally:
        if lab is not None:
            lab.close()
        cluster.stop()


def cni_chain(host: Host, lab: Lab, profile: str) -> Chain:
    conflist = {"cniVersion": "1.0.0", "name": profile, "plugins": [{
        "type": "calico", "nodename": host.name, "state_dir": str(host.state_dir),
        "ipam_addr": lab.ipam, "policy_addr": lab.policy,
        "ipam": {"type": "calico-ipam", "ipv4_pools": [POOL]}}]}
    return Chain(conflist, CNI_PATH, runner=["nsenter", f"--net={host.ns.path}"])


def wait_for(what: str, condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.5)


def node_running(host: Host) -> bool:
    """Every process of the node runs, BGP is up with both other nodes (IPv4
    and IPv6) and the endpoint service answers."""
    import json
    children = json.loads(host.paths.status.read_text())["children"]
    return all(c["state"] == "running" for c in children.values()) and \
        established(host, 4) and \
        host.calicoctl("container", "show").returncode == 0


# The invariants --------------------------------------------------------------------------

class Observed:
    """etcd and every kernel, read once."""

    def __init__(self, lab: Lab, tracked: list[Tracked]):
        store = lab.admin_store()
        try:
            self.records = [Endpoint.from_json(kv.json()) for kv in store.list(keys.HOSTS)
                            if keys.is_endpoint(kv.key)]
            self.allocations = {}
            for kv in store.list(keys.blocks_prefix()):
                block = Block.from_json(kv.json())
                for ordinal, alloc in block.allocations.items():
                    self.allocations[block.ip(ordinal)] = alloc
        finally:
            store.close()
        self.live = [t for t in tracked if t.state == "live"]
        self.failed = [t for t in tracked if t.state == "failed" and t.workload is not None]
        self.kernel = {t.name: t.kernel_ips() for t in self.live}
        self.hosts = {}
        for host in lab.hosts.values():
            links = host.ns.run("ip", "-o", "link").stdout.splitlines()
            names = [ln.split(":")[1].strip().split("@")[0] for ln in links]
            routes = [ln.split() for ln in host.ns.run("ip", "-4", "route").stdout.splitlines()
                      if " dev cali" in ln]
            self.hosts[host.name] = (names, {r[0]: r[r.index("dev") + 1] for r in routes})


def problems(obs: Observed, ipam_check: str) -> list[str]:
    """Everything wrong with the cluster as observed; empty once converged."""
    found = []
    by_ip = collections.defaultdict(list)
    for ep in obs.records:
        if ep.state != ACTIVE or ep.awaiting_policy:
            found.append(f"half-made endpoint: {ep.state} record {ep.endpoint_id} of "
                         f"{ep.orchestrator}/{ep.workload_id} on {ep.node}"
                         + (" awaiting its policy" if ep.awaiting_policy else ""))
        for ip in ep.ips:
            by_ip[ip].append(ep)
    found += [f"duplicate address {ip} in records " + ", ".join(
        f"{e.node}/{e.orchestrator}/{e.workload_id}" for e in eps)
        for ip, eps in by_ip.items() if len(eps) > 1]

    owners = collections.defaultdict(list)
    matched = set()
    orchestrator = {"calicoctl": "netns", "cni": "cni", "docker": "docker"}
    for t in obs.live:
        ips = obs.kernel[t.name]
        if len(ips) != 1:
            found.append(f"{t}: its namespace holds {ips or 'no address'}, not one address")
        for ip in ips:
            owners[ip].append(t)
            eps = by_ip.get(ip, [])
            if len(eps) != 1 or eps[0].node != t.host.name or \
                    eps[0].orchestrator != orchestrator[t.kind]:
                found.append(f"{t}: its address {ip} is in records {eps}")
                continue
            ep = eps[0]
            matched.add(ep.endpoint_id)
            if sorted(ep.ips) != sorted(ips):
                found.append(f"{t}: kernel {ips}, record {ep.ips}")
            if t.profile_set and ep.profile_ids != [t.profile]:
                found.append(f"{t}: profiles {ep.profile_ids}, not [{t.profile}]")
            alloc = obs.allocations.get(ip)
            if alloc is None:
                found.append(f"{t}: its address {ip} is not allocated")
            elif t.kind == "docker":
                if alloc.handle_id not in ep.labels.get(DOCKER_IPAM_HANDLES_LABEL, ""):
                    found.append(f"{t}: {ip} is allocated to {alloc.handle_id}, which its "
                                 "endpoint does not name")
            elif alloc.attributes.get("endpoint") != ep.endpoint_id:
                found.append(f"{t}: {ip} is allocated to {alloc.handle_id} {alloc.attributes}")
            names, routes = obs.hosts[t.host.name]
            if routes.get(ip) != ep.host_interface:
                found.append(f"{t}: {t.host.name} routes {ip} to {routes.get(ip)}, not "
                             f"{ep.host_interface}")
    found += [f"duplicate address {ip} in the kernels of " + ", ".join(map(str, ts))
              for ip, ts in owners.items() if len(ts) > 1]
    found += [f"endpoint {ep.endpoint_id} ({ep.orchestrator}/{ep.workload_id} on {ep.node}, "
              f"{ep.ips}) belongs to no live workload"
              for ep in obs.records if ep.endpoint_id not in matched]
    found += [f"leak: {ip} is allocated to {a.handle_id} {a.attributes}, and no live "
              "workload has it" for ip, a in sorted(obs.allocations.items())
              if ip not in owners]

    for host, (names, routes) in obs.hosts.items():
        mine = {ep.host_interface for ep in obs.records if ep.node == host}
        cali = {n for n in names if n.startswith("cali")}
        found += [f"{host}: interface {n} has no endpoint" for n in sorted(cali - mine)]
        found += [f"{host}: interface {n} of an endpoint is missing" for n in sorted(mine - cali)]
        found += [f"{host}: a Docker veth {n} is left waiting" for n in names
                  if n.startswith("tmp")]
        seen = [ip for ip in routes if any(ip in ep.ips for ep in obs.records
                                           if ep.node == host)]
        found += [f"{host}: a route to {ip} of no endpoint of its own" for ip in routes
                  if ip not in seen]
    for t in obs.failed:
        left = t.links()
        if left:
            found.append(f"{t}: the failed add left {left} in its namespace")
    if ipam_check:
        found.append(f"calicoctl ipam check: {ipam_check}")
    return found


def ipam_check(host: Host) -> str:
    """'' if `calicoctl ipam check` is clean, else what it said."""
    result = host.calicoctl("ipam", "check")
    return "" if result.returncode == 0 else (result.stdout + result.stderr).strip()


def pings(src_netns: str, ip: str) -> bool:
    return subprocess.run(["nsenter", f"--net={src_netns}", "ping", "-c1", "-W1", ip],
                          capture_output=True, timeout=30).returncode == 0


def connectivity(sample: list[tuple[Tracked, str, str]]) -> list[str]:
    """Each (workload, its namespace, its address) pings every other of its
    profile (a few tries: a route may still be on its way) and none of the
    other profile."""
    def probe(a, b):
        (ta, ns, _), (tb, _, ip) = a, b
        if ta.profile == tb.profile:
            ok = any(pings(ns, ip) for _ in range(10))
            return None if ok else f"{ta.name} ({ta.profile}) cannot reach {tb.name} {ip}"
        reached = any(pings(ns, ip) for _ in range(2))
        return f"{ta.name} ({ta.profile}) reaches {tb.name} ({tb.profile}) {ip}" \
            if reached else None
    pairs = [(a, b) for a in sample for b in sample if a is not b]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return [w for w in pool.map(lambda p: probe(*p), pairs) if w]


def db_sizes(cluster: launch.EtcdCluster) -> dict[str, int]:
    return {m.name: cluster.status(m)["db_size"] for m in cluster.members}


# The test --------------------------------------------------------------------------------

def test_chaos(chaos_lab):
    cluster, lab = chaos_lab
    hosts = list(lab.hosts.values())
    docker_host = lab.hosts["c3"]
    ledger, stop = Ledger(time.monotonic()), threading.Event()
    ledger.say(f"seed {SEED}, {SECONDS:g}s (CHAOS_SEED, CHAOS_SECONDS)")
    for host in hosts:
        wait_for(f"{host.name} ready", lambda h=host: node_running(h), 60)
    rng = random.Random(SEED)
    kinds = [("calicoctl", "c1"), ("calicoctl", "c3"), ("cni", "c1"), ("cni", "c2"),
             ("docker", "c3")]
    ledger.say("churn and faults begin")
    start = time.monotonic()
    workers = [Worker(kind, lab.hosts[host], ledger, stop, random.Random(rng.random()),
                      len(kinds) / RATE, f"{kind[:2]}{n}x",
                      {p: cni_chain(lab.hosts[host], lab, p) for p in PROFILES})
               for n, (kind, host) in enumerate(kinds)]
    monkey = Monkey(cluster, lab, hosts, docker_host, ledger, random.Random(rng.random()),
                    start, SECONDS, stop)
    try:
        for thread in workers + [monkey]:
            thread.start()
        monkey.join(SECONDS + 120)
        stop.wait(max(0.0, start + SECONDS - time.monotonic()))
    finally:
        stop.set()
        for thread in workers + [monkey]:
            thread.join(180)
    errors = [t.error for t in workers + [monkey] if t.error]
    assert not errors, f"the test's own threads failed: {errors!r}\n{ledger.summary()}"
    ledger.say("churn and faults over")
    print(ledger.summary(), flush=True)

    # Quiet now: everything runs again; failed removes are retried until done.
    for host in hosts:
        wait_for(f"{host.name} running again", lambda h=host: node_running(h), 90)
    tracked = [t for w in workers for t in w.made]
    deadline = time.monotonic() + 60
    for worker in workers:
        for t in [t for t in worker.made if t.state == "removing"]:
            while t.state == "removing":
                assert time.monotonic() < deadline, f"{t}: cannot be removed\n" \
                    f"{ledger.summary()}"
                worker.remove(t)
    assert len([t for t in tracked if t.state == "live"]) >= 2, ledger.summary()
    ledger.say("everything runs again")

    found: list[str] = []

    def converged():
        nonlocal found
        before, found = found, problems(Observed(lab, tracked), ipam_check(hosts[0]))
        if found and found != before:       # what is left, as it changes: slow repairs show
            ledger.say("not converged yet:\n  " + "\n  ".join(found))
        return not found
    deadline = time.monotonic() + CONVERGE
    while not converged():
        assert time.monotonic() < deadline, "\n".join(
            [f"not converged within {CONVERGE:g}s:"] + found + [ledger.summary()])
        time.sleep(1)

    ledger.say("converged")

    # Reachable exactly as the profiles say, over a sample of both profiles.
    live = [t for t in tracked if t.state == "live" and t.profile_set]
    sample = []
    for profile in PROFILES:
        mine = [t for t in live if t.profile == profile]
        random.Random(SEED).shuffle(mine)
        # Every kind first, then whatever is left.
        by_kind = {t.kind: t for t in mine}
        chosen = list(by_kind.values()) + [t for t in mine if t not in by_kind.values()]
        sample += [(t, t.netns, t.kernel_ips()[0]) for t in chosen[:SAMPLE]]
    wrong = connectivity(sample)
    assert not wrong, "\n".join(wrong + [ledger.summary()])
    ledger.say(f"connectivity as the profiles say, among {[t.name for t, _, _ in sample]}")

    sizes = db_sizes(cluster)
    bound = DB_BASE + DB_PER_OPERATION * ledger.made
    ledger.say(f"etcd database {sizes} bytes (bound {bound})")
    assert max(sizes.values()) < bound, f"etcd's database: {sizes}\n{ledger.summary()}"
    for t in tracked:
        assert t.state in ("live", "failed", "gone"), t
