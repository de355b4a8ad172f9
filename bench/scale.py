"""Scale benchmark (make bench: 10 hosts; make bench-scale: 10, 25 and 50).

For each size, a fresh etcd and control plane (IPAM, policy and BGP services)
and that many simulated hosts, each a full node (`calicoctl node`: policy
agent, endpoint service, BIRD and its renderer, IP-in-IP), with the node mesh
off and every node peering with two route reflectors (plain BIRDs configured
here, as tests/system/test_bgp_peers.py does). Then, and printed per size:

- adds: WORKLOADS per host (1,000 at 50 hosts), each a network namespace
  given to its host's endpoint service (AddEndpoint over its unix socket,
  every workload in profile SCALE), up to ADD_WORKERS at once across hosts:
  the wall time for all of them, and p50/p99 of one add;
- rule: the profile's inbound rules change (UpdateRules, a new TCP port)
  until each host's kernel has the rule (`iptables -S` of the profile's
  chain in the host's namespace; hosts are looked at in turn, so a time is
  exact to one round of looks): p50 and max over hosts and RULE_TRIALS
  changes;
- route: a workload in a new block (a pool of /32 blocks) on one host, until
  every other host has the block's route (netlink in each namespace): p50
  and max over hosts and ROUTE_TRIALS workloads;
- etcd: requests per second while adding and while idle (its gRPC calls
  handled, from its /metrics), and its database size at the end;
- memory: PSS (see bench/procstat.py) of all nodes' processes, per host,
  and of the control plane (etcd, services, route reflectors);
- idle CPU: over IDLE seconds after everything settled, all nodes'
  processes (per host) and the control plane, as a share of one core.
- where the time goes while adding: CPU by kind of process (policy agents,
  renderers, etcd...), all hosts together, and the CPU one add cost each host
  (all hosts' node processes' CPU / adds / hosts: "host ms/add").

The point is the growth curve: what one change costs per host should not
grow with the number of hosts. Everything it creates is removed before it
exits, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyroute2 import IPRoute

from common import control_plane, percentile
from procstat import cpu_seconds, descendants, name, pss_kib
from calico.bgp.v1 import bgp_pb2, bgp_pb2_grpc
from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import netns, rpc
from node.policy.dataplane import profile_chain
from tools.lab import UNDERLAY_V4, Host, Lab, Namespace

POOL, BLOCK_POOL = "10.180.0.0/16", "10.181.0.0/16"   # /26 blocks; /32 blocks
PROFILE = "SCALE"
WORKLOADS = 20
ADD_WORKERS = 4
START_WORKERS = 4       # nodes started at once
RULE_TRIALS, ROUTE_TRIALS = 3, 3
RR_INDEXES = (250, 251)
IDLE = 30.0
SETTLE = 10.0           # seconds left alone before the idle window
WAIT = 300.0            # the longest any one phase may take before the run fails


def rr_conf(ips: list[str]) -> str:
    peers = "".join(f"""
protocol bgp c{i} {{
  local $ip as 64511;
  neighbor {ip} as 64511;
  rr client;
  direct;
  connect retry time 5;
  ipv4 {{ import all; export all; }};
}}
""" for i, ip in enumerate(ips))
    return "router id $ip;\nprotocol device {}\n" + peers


def rules(port: int | None) -> str:
    inbound = [{"action": "allow", "src_tag": PROFILE}]
    if port:
        inbound.append({"action": "allow", "protocol": "tcp", "dst_ports": [port]})
    return json.dumps({"id": PROFILE, "inbound_rules": inbound + [{"action": "deny"}],
                       "outbound_rules": [{"action": "allow"}]})


def wait_for(what: str, condition, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not so after {timeout:g}s")
        time.sleep(0.5)


class Etcd:
    """etcd's own figures, from its /metrics (as admin, with the plane's TLS)."""

    def __init__(self, plane):
        url = plane.etcd_tcp
        self.url = (url if "://" in url else f"http://{url}") + "/metrics"
        self.context = None
        if self.url.startswith("https://"):
            env = plane.env
            self.context = ssl.create_default_context(cafile=env["CALICO_TLS_CA_FILE"])
            self.context.load_cert_chain(env["CALICO_TLS_CERT_FILE"], env["CALICO_TLS_KEY_FILE"])
        self.pid = _etcd_pid(plane.tmp)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url, context=self.context, timeout=10) as resp:
            text = resp.read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r"([a-z_]+)(\{[^}]*\})?\s+(\S+)", line)
            if m:
                found[m[1]] = found.get(m[1], 0.0) + float(m[3])
        return found

    def requests(self) -> float:
        return self.metrics().get("grpc_server_handled_total", 0.0)

    def db_size(self) -> float:
        return self.metrics().get("etcd_mvcc_db_total_size_in_bytes", 0.0)


def _etcd_pid(tmp: Path) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"etcd") and str(tmp).encode() in b" ".join(argv):
                return int(entry)
    return None


class Scale:
    """One size: its lab, its hosts and what was measured on them."""

    def __init__(self, n: int, plane):
        self.n, self.plane = n, plane
        self.prefix = f"scale{n}"
        self.row: dict = {"hosts": n}
        self.lab: Lab | None = None
        self.add_cpu: list[tuple[str, float]] = []
        self.hosts: list[Host] = []

    # Building -----------------------------------------------------------------
    def build(self) -> None:
        Lab.remove_leftovers(self.prefix)
        self.lab = lab = Lab(self.plane.tmp / self.prefix, self.plane.etcd_unix, self.plane.pki,
                             prefix=self.prefix)
        with rpc.channel(lab.unix["ipam"]) as ch:
            stub = ipam_pb2_grpc.IpamServiceStub(ch)
            stub.CreatePool(ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr=POOL)),
                            timeout=10)
            stub.CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr=BLOCK_POOL, block_size=32)), timeout=10)
        with rpc.channel(lab.unix["policy"]) as ch:
            policy = policy_pb2_grpc.PolicyServiceStub(ch)
            policy.CreateProfile(policy_pb2.CreateProfileRequest(name=PROFILE), timeout=10)
            policy.UpdateRules(policy_pb2.UpdateRulesRequest(name=PROFILE, rules_json=rules(None)),
                               timeout=10)
        ips = [f"{UNDERLAY_V4}.{i + 2}" for i in range(self.n)]
        rrs = [lab.add_router(f"rr{k}", index, rr_conf(ips))
               for k, index in enumerate(RR_INDEXES)]
        self.rrs = rrs
        with rpc.channel(lab.unix["bgp"]) as ch:
            bgp = bgp_pb2_grpc.BgpServiceStub(ch)
            bgp.SetBgpConfig(bgp_pb2.SetBgpConfigRequest(node_mesh=False), timeout=10)
            for rr in rrs:
                bgp.AddPeer(bgp_pb2.AddPeerRequest(peer=bgp_pb2.Peer(
                    ip=rr.ip, route_reflector=True)), timeout=10)
        # Certificates first, one by one (pki writes files); then the nodes.
        for i, ip in enumerate(ips):
            lab.identities.files(f"node:h{i}", (ip, f"fd99::{i + 2}"))
        lock = threading.Lock()
        started = time.perf_counter()

        def start(i: int) -> None:
            host = Host(lab, f"h{i}", i + 2, False, True, 0)
            with lock:
                lab.hosts[host.name] = host

        with ThreadPoolExecutor(START_WORKERS) as pool:
            list(pool.map(start, range(self.n)))
        self.hosts = [lab.hosts[f"h{i}"] for i in range(self.n)]
        self.row["start_s"] = time.perf_counter() - started
        wait_for("every node's sessions with both route reflectors",
                 lambda: all(rr.birdc("show", "protocols").count("Established") >= self.n
                             for rr in rrs))

    # Measuring ----------------------------------------------------------------
    def add_workloads(self, etcd: Etcd) -> None:
        lab = self.lab
        names = [(h, f"{self.prefix}-{h.name}w{j}") for j in range(WORKLOADS) for h in self.hosts]
        with ThreadPoolExecutor(START_WORKERS) as pool:
            jobs = list(pool.map(lambda job: (job[0], Namespace(lab, job[1])), names))
        channels = {h.name: rpc.channel(h.endpoint_addr) for h in self.hosts}
        stubs = {name: endpoint_pb2_grpc.EndpointServiceStub(ch)
                 for name, ch in channels.items()}
        times: list[float] = []

        def add(job) -> None:
            host, ns = job
            start = time.perf_counter()
            stubs[host.name].AddEndpoint(endpoint_pb2.AddEndpointRequest(
                orchestrator="bench", workload_id=ns.name, netns_path=ns.path, auto_ipv4=1,
                ipv4_pools=[POOL], profile_ids=[PROFILE]), timeout=60)
            times.append(time.perf_counter() - start)

        node_pids = [p for found in self.node_pids().values() for p in found]
        pids = node_pids + self.control_pids(etcd)
        cpu_before = {p: cpu_seconds(p) for p in pids}
        before, started = etcd.requests(), time.perf_counter()
        try:
            with ThreadPoolExecutor(ADD_WORKERS) as pool:
                list(pool.map(add, jobs))
        finally:
            for ch in channels.values():
                ch.close()
        wall = time.perf_counter() - started
        # Where the machine's time went while adding: CPU by kind of process.
        by_kind: dict[str, float] = {}
        for p in pids:
            kind = name(p)
            by_kind[kind] = by_kind.get(kind, 0.0) + (cpu_seconds(p) - cpu_before[p]) / wall
        self.add_cpu = sorted(by_kind.items(), key=lambda kv: -kv[1])
        # What one add costs each host, whether the workload is its own or
        # another host's (all hosts' node processes / adds / hosts): the figure
        # that must stay flat as hosts are added.
        node_cpu = sum(cpu_seconds(p) - cpu_before[p] for p in node_pids)
        self.row.update(adds=len(times), add_total_s=wall,
                        node_cpu_per_add_ms=node_cpu / len(times) / self.n * 1000,
                        add_p50_ms=percentile(times, 50) * 1000,
                        add_p99_ms=percentile(times, 99) * 1000,
                        etcd_busy_rps=(etcd.requests() - before) / wall)

    def rule_changes(self) -> None:
        chain = profile_chain(PROFILE, "inbound")
        seen: list[float] = []
        with rpc.channel(self.lab.unix["policy"]) as ch:
            policy = policy_pb2_grpc.PolicyServiceStub(ch)
            for t in range(RULE_TRIALS):
                port = 9000 + t
                rule = re.compile(rf"--dports (\S+,)?{port}(,|\s|$)", re.M)
                waiting = list(self.hosts)
                start = time.perf_counter()
                policy.UpdateRules(policy_pb2.UpdateRulesRequest(
                    name=PROFILE, rules_json=rules(port)), timeout=10)
                while waiting:
                    for host in list(waiting):
                        out = host.ns.run("iptables", "-w", "-S", chain, check=False).stdout
                        if rule.search(out):
                            seen.append(time.perf_counter() - start)
                            waiting.remove(host)
                    if time.perf_counter() - start > WAIT:
                        raise RuntimeError(f"rule for port {port} missing on "
                                           f"{[h.name for h in waiting]} after {WAIT:g}s")
        self.row.update(rule_p50_ms=percentile(seen, 50) * 1000, rule_max_ms=max(seen) * 1000)

    def new_block_routes(self) -> None:
        routers = [IPRoute(fileno=netns.netlink_socket(h.ns.path).detach()) for h in self.hosts]
        seen: list[float] = []
        try:
            for t in range(ROUTE_TRIALS):
                src = (t * 7) % self.n
                ns = Namespace(self.lab, f"{self.prefix}-b{t}")
                host = self.hosts[src]
                with rpc.channel(host.endpoint_addr) as ch:
                    start = time.perf_counter()
                    ep = endpoint_pb2_grpc.EndpointServiceStub(ch).AddEndpoint(
                        endpoint_pb2.AddEndpointRequest(
                            orchestrator="bench", workload_id=ns.name, netns_path=ns.path,
                            auto_ipv4=1, ipv4_pools=[BLOCK_POOL], profile_ids=[PROFILE]),
                        timeout=60).endpoint
                ip = ep.ipv4_nets[0].split("/")[0]
                waiting = [r for i, r in enumerate(routers) if i != src]
                while waiting:
                    for r in list(waiting):
                        if has_route(r, ip):
                            seen.append(time.perf_counter() - start)
                            waiting.remove(r)
                    if time.perf_counter() - start > WAIT:
                        raise RuntimeError(f"route to {ip} on {len(waiting)} hosts missing "
                                           f"after {WAIT:g}s")
                    time.sleep(0.002)
        finally:
            for r in routers:
                r.close()
        self.row.update(route_p50_ms=percentile(seen, 50) * 1000, route_max_ms=max(seen) * 1000)

    def node_pids(self) -> dict[str, list[int]]:
        found = {}
        for host in self.hosts:
            pid = host.supervisor_pid()
            found[host.name] = descendants(pid) if pid else []
        return found

    def control_pids(self, etcd: Etcd) -> list[int]:
        pids = [p.pid for p in self.lab.procs if p.poll() is None]    # services, RR BIRDs
        return pids + ([etcd.pid] if etcd.pid else [])

    def idle(self, etcd: Etcd, seconds: float) -> None:
        time.sleep(SETTLE)      # past the last trial's work: what is measured is idle
        nodes, control = self.node_pids(), self.control_pids(etcd)
        everything = [p for pids in nodes.values() for p in pids] + control
        cpu_before = {p: cpu_seconds(p) for p in everything}
        before = etcd.requests()
        time.sleep(seconds)
        requests = etcd.requests() - before

        def share(pids) -> float:
            return sum(cpu_seconds(p) - cpu_before[p] for p in pids) / seconds * 100

        node_cpu = share([p for pids in nodes.values() for p in pids])
        node_pss = sum(pss_kib(p) for pids in nodes.values() for p in pids) / 1024
        self.row.update(
            etcd_idle_rps=requests / seconds, etcd_idle_rps_per_host=requests / seconds / self.n,
            etcd_db_mb=etcd.db_size() / 1e6,
            node_pss_mib=node_pss, node_pss_per_host=node_pss / self.n,
            control_pss_mib=sum(pss_kib(p) for p in control) / 1024,
            idle_cpu_nodes=node_cpu, idle_cpu_per_host=node_cpu / self.n,
            idle_cpu_control=share(control))

    def show_logs(self, lines: int = 30) -> None:
        """The end of the control plane's logs: where a failure usually shows."""
        if self.lab is None:
            return
        for log in sorted(self.lab.control_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)

    def close(self) -> None:
        if self.lab is None:
            return
        # Nodes stop in parallel (each takes a few seconds), then the rest.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda h: h.stop_node(), self.lab.hosts.values()))
        self.lab.close()


def has_route(ipr: IPRoute, ip: str) -> bool:
    for r in ipr.get_routes(family=socket.AF_INET, table=254):
        if r["proto"] == 12 and r.get_attr("RTA_DST") == ip and r["dst_len"] == 32:
            return True
    return False


def run(n: int, idle: float) -> dict:
    with control_plane(f"scale{n}") as plane:
        scale = Scale(n, plane)
        try:
            scale.build()
            etcd = Etcd(plane)
            scale.add_workloads(etcd)
            scale.rule_changes()
            scale.new_block_routes()
            scale.idle(etcd, idle)
        except BaseException:
            scale.show_logs()
            raise
        finally:
            scale.close()
    print(f"  {n} hosts done: {json.dumps({k: round(v, 2) for k, v in scale.row.items()})}",
          flush=True)
    scale.row["add_cpu"] = ", ".join(f"{kind} {100 * share:.0f}%"
                                     for kind, share in scale.add_cpu[:6])
    return scale.row


def report(rows: list[dict], idle: float) -> None:
    print(f"\nScale: hosts with a full node each, {WORKLOADS} workloads per host, two route "
          f"reflectors (machine: {os.cpu_count()} cores)")
    columns = [("hosts", "hosts", "{:.0f}"), ("start_s", "nodes up s", "{:.1f}"),
               ("adds", "adds", "{:.0f}"), ("add_total_s", "all adds s", "{:.1f}"),
               ("add_p50_ms", "add p50 ms", "{:.0f}"), ("add_p99_ms", "add p99 ms", "{:.0f}"),
               ("rule_p50_ms", "rule p50 ms", "{:.0f}"), ("rule_max_ms", "rule max ms", "{:.0f}"),
               ("route_p50_ms", "route p50 ms", "{:.0f}"),
               ("route_max_ms", "route max ms", "{:.0f}"),
               ("node_cpu_per_add_ms", "host ms/add", "{:.2f}")]
    print(" ".join(f"{title:>12}" for _, title, _ in columns))
    for r in rows:
        print(" ".join(f"{fmt.format(r[key]):>12}" for key, _, fmt in columns))
    columns = [("hosts", "hosts", "{:.0f}"), ("etcd_busy_rps", "etcd req/s add", "{:.0f}"),
               ("etcd_idle_rps", "etcd req/s idle", "{:.1f}"),
               ("etcd_idle_rps_per_host", "idle req/s/host", "{:.2f}"),
               ("etcd_db_mb", "etcd db MB", "{:.1f}"),
               ("node_pss_mib", "nodes PSS MiB", "{:.0f}"),
               ("node_pss_per_host", "per host MiB", "{:.1f}"),
               ("control_pss_mib", "control MiB", "{:.0f}"),
               ("idle_cpu_nodes", "nodes idle %", "{:.1f}"),
               ("idle_cpu_per_host", "per host %", "{:.2f}"),
               ("idle_cpu_control", "control idle %", "{:.1f}")]
    print(" ".join(f"{title:>15}" for _, title, _ in columns))
    for r in rows:
        print(" ".join(f"{fmt.format(r[key]):>15}" for key, _, fmt in columns))
    print(f"(idle CPU over {idle:g} s, % of one core; rule: profile rule change -> every "
          "host's iptables; route: new block -> its route on every other host)")
    print("CPU while adding, by kind of process (% of one core, all hosts together):")
    for r in rows:
        print(f"  {r['hosts']:>3} hosts: {r['add_cpu']}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = last["hosts"] / first["hosts"]
        print(f"growth from {first['hosts']} to {last['hosts']} hosts (x{growth:g}): "
              + ", ".join(f"{name} x{last[key] / first[key]:.2f}" for key, name in (
                  ("node_cpu_per_add_ms", "CPU per add per host"),
                  ("add_p50_ms", "add p50"), ("rule_p50_ms", "rule p50"),
                  ("route_p50_ms", "route p50"), ("node_pss_per_host", "memory per host"),
                  ("idle_cpu_per_host", "idle CPU per host")) if first[key]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="10",
                        help="comma-separated sizes (default 10; make bench-scale: 10,25,50)")
    parser.add_argument("--idle", type=float, default=IDLE,
                        help=f"seconds of the idle window (default {IDLE:g})")
    args = parser.parse_args()
    sizes = [int(s) for s in args.hosts.split(",")]
    if any(not 1 < n <= 240 for n in sizes):
        parser.error("--hosts: each size must be 2 to 240")
    rows = [run(n, args.idle) for n in sizes]
    report(rows, args.idle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
