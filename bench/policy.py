"""Policy dataplane benchmark (make bench).

One node's policy agent (the real one, in a network namespace of its own,
programming real iptables and ipsets) against a real etcd holding 100
profiles with tag rules, 250 endpoints on this node and the rest of the
cluster's endpoints on 40 other nodes, written straight to etcd as records
(no veths: what is measured is the agent and the kernel tables, which do not
depend on the interfaces existing). The cluster doubles: 5,000, 10,000 and
20,000 endpoints.

At each size, from the etcd write until the node's kernel shows it (polled
in the node's namespace: `iptables -S <chain>`, `ipset test <set> <ip>`):

- a rule update (a profile gains a port; 20 updates, p50 and p99);
- an endpoint elsewhere joining a profile (its address joins the profile's
  tag set; 20 joins, p50 and p99);
- the agent's CPU per change (its utime + stime over those 40 changes);
- the agent's start and full resync (until it reports its progress), and
  the iptables rules and ipset members it keeps.

Aims: at 10,000 endpoints, both changes p50 < 100 ms; and the per-change
cost flat as the cluster doubles (the agent applies watch events to its
model; only a resync reads the cluster). The poll itself takes a few
milliseconds; its median is printed as the measurement's resolution.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time

from common import control_plane, percentile
from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import Txn
from calicopy.model.endpoint import ACTIVE, Endpoint, endpoint_id
from node.policy.dataplane import profile_chain, tag_set
from tools import launch
from tools.lab import Lab, Namespace

NODE, PROFILES, LOCAL, OTHER_NODES = "bench-node", 100, 250, 40
SIZES = [int(n) for n in os.environ.get("CALICO_BENCH_POLICY_SIZES",
                                        "5000,10000,20000").split(",")]
CHANGES = 20
AIM_SIZE = 10000


def profile_rules(i: int, ports: tuple[int, ...] = ()) -> dict:
    inbound = [{"action": "allow", "src_tag": f"P{i}"},
               {"action": "allow", "protocol": "tcp", "src_tag": f"P{(i + 1) % PROFILES}",
                "dst_ports": [80, 443]}]
    if ports:
        inbound.append({"action": "allow", "protocol": "tcp", "dst_ports": list(ports)})
    return {"id": f"P{i}", "inbound_rules": inbound + [{"action": "deny"}],
            "outbound_rules": [{"action": "allow"}]}


def make_endpoint(n: int, profiles: list[str]) -> tuple[str, Endpoint]:
    """Endpoint number ``n``: the first LOCAL are this node's, the others
    spread over OTHER_NODES nodes; each in profile P<n % PROFILES>."""
    node = NODE if n < LOCAL else f"other{n % OTHER_NODES}"
    ep = Endpoint(endpoint_id(node, "bench", f"w{n}", "eth0"), node, "bench", f"w{n}",
                  "eth0", "/none", ACTIVE,
                  f"02:00:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}:01",
                  profile_ids=profiles)
    ep.set_ips([f"10.{160 + n // 65536}.{n // 256 % 256}.{n % 256}"])
    return keys.endpoint(node, "bench", ep.workload_id, ep.endpoint_id), ep


def write_endpoints(store, start: int, stop: int) -> int:
    revision = 0
    for chunk in range(start, stop, 100):
        txn = Txn()
        for n in range(chunk, min(chunk + 100, stop)):
            key, ep = make_endpoint(n, [f"P{n % PROFILES}"])
            txn.put(key, None, ep.to_json())
        revision = store.commit(txn)
    return revision


def wait_applied(store, revision: int, timeout: float = 300) -> float:
    start = time.perf_counter()
    while True:
        kv = store.get(keys.policy_applied(NODE))
        if kv and kv.json()["revision"] >= revision:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"agent did not apply revision {revision} in {timeout}s")
        time.sleep(0.005)


def wait_for(what: str, probe, start: float, timeout: float = 60) -> float:
    """Seconds from ``start`` until ``probe()`` holds."""
    while not probe():
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{what} is not in the kernel after {timeout}s")
    return time.perf_counter() - start


def has_port(ns: Namespace, profile: str, port: int) -> bool:
    rule = re.compile(rf"--dports (\S+,)?{port}(,|\s|$)", re.M)
    return bool(rule.search(ns.run("iptables", "-w", "-S", profile_chain(profile, "inbound"),
                                   check=False).stdout))


def in_set(ns: Namespace, tag: str, ip: str) -> bool:
    return ns.run("ipset", "test", tag_set(tag, 4), ip, check=False).returncode == 0


def counts(ns: Namespace) -> tuple[int, int]:
    rules = sum(ns.run(tool).stdout.count("\n-A ") for tool in ("iptables-save",
                                                                 "ip6tables-save"))
    members = sum(1 for line in ns.run("ipset", "save").stdout.splitlines()
                  if line.startswith("add cali"))
    return rules, members


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def measure(store, ns: Namespace, agent_pid: int, size: int, round_: int) -> dict:
    """Rule updates and remote joins at one cluster size."""
    cpu = cpu_seconds(agent_pid)
    updates, joins, polls = [], [], []
    for k in range(CHANGES):
        name, port = f"P{k}", 8000 + 100 * round_ + k
        kv = store.get(keys.profile_rules(name))
        ports = tuple(kv.json()["inbound_rules"][2].get("dst_ports", ())) \
            if len(kv.json()["inbound_rules"]) > 3 else ()
        start = time.perf_counter()
        store.commit(Txn().put(kv.key, kv, profile_rules(k, ports + (port,))))
        updates.append(wait_for(f"port {port} of {name}", lambda: has_port(ns, name, port),
                                start))
        # An endpoint elsewhere (of profile P<n % 100>) joins one more profile.
        n = LOCAL + round_ * CHANGES + k
        joined = f"P{(n + 50) % PROFILES}"
        key, ep = make_endpoint(n, [f"P{n % PROFILES}", joined])
        start = time.perf_counter()
        store.commit(Txn().put(key, store.get(key), ep.to_json()))
        joins.append(wait_for(f"{ep.ips[0]} in {joined}",
                              lambda: in_set(ns, joined, ep.ips[0]), start))
        start = time.perf_counter()
        in_set(ns, joined, ep.ips[0])
        polls.append(time.perf_counter() - start)
    time.sleep(0.5)          # the last pass's tail
    used = cpu_seconds(agent_pid) - cpu
    rules, members = counts(ns)
    return {"size": size, "update": updates, "join": joins, "poll": statistics.median(polls),
            "cpu": used / (2 * CHANGES), "rules": rules, "members": members}


def main() -> int:
    rows = []
    with control_plane("policy") as plane:
        tmp = plane.tmp
        store = EtcdStore.from_env(plane.etcd_tcp, timeout=30)
        Lab.remove_leftovers("benchpol")
        lab = Lab(tmp / "lab", plane.etcd_unix, plane.pki, prefix="benchpol")
        ns = Namespace(lab, "benchpol-node")
        agent = None

        def start_agent():
            return launch.spawn(["ip", "netns", "exec", ns.name, sys.executable, "-m",
                                 "node.policy", f"--name={NODE}"], tmp / "agent.log",
                                env={"ETCD_ENDPOINTS": plane.etcd_unix})
        try:
            for i in range(PROFILES):
                store.commit(Txn().put(keys.profile_tags(f"P{i}"), None, [f"P{i}"])
                             .put(keys.profile_rules(f"P{i}"), None, profile_rules(i)))
            have = 0
            for round_, size in enumerate(SIZES):
                revision = write_endpoints(store, have, size)
                have = size
                if agent is not None:
                    launch.stop_pid(agent.pid)
                kv = store.get(keys.policy_applied(NODE))
                if kv:
                    store.commit(Txn().delete(kv))
                start = time.perf_counter()
                agent = start_agent()
                wait_applied(store, revision)
                resync = time.perf_counter() - start
                row = measure(store, ns, agent.pid, size, round_)
                row["resync"] = resync
                rows.append(row)
        finally:
            if agent is not None:
                launch.stop_pid(agent.pid)
            lab.close()
            store.close()

    print(f"Policy agent, one node with {LOCAL} endpoints, {PROFILES} profiles with tag rules, "
          f"real iptables/ipsets; the cluster's other endpoints on {OTHER_NODES} nodes")
    print(f"{'endpoints':>10} {'rule update ms':>16} {'remote join ms':>16} "
          f"{'agent CPU':>10} {'start+resync':>13} {'rules':>7} {'members':>8}")
    print(f"{'':>10} {'p50':>7} {'p99':>8} {'p50':>7} {'p99':>8} {'ms/change':>10} "
          f"{'ms':>13}")
    for r in rows:
        print(f"{r['size']:>10} {percentile(r['update'], 50) * 1000:>7.0f} "
              f"{percentile(r['update'], 99) * 1000:>8.0f} "
              f"{percentile(r['join'], 50) * 1000:>7.0f} {percentile(r['join'], 99) * 1000:>8.0f} "
              f"{r['cpu'] * 1000:>10.1f} {r['resync'] * 1000:>13.0f} {r['rules']:>7} "
              f"{r['members']:>8}")
    poll = statistics.median(r["poll"] for r in rows) * 1000
    print(f"  ({CHANGES} of each per size; one poll of the kernel takes {poll:.0f} ms, "
          f"included in the figures)")
    aim = next((r for r in rows if r["size"] == AIM_SIZE), None)
    if aim:
        for what in ("update", "join"):
            p50 = percentile(aim[what], 50) * 1000
            print(f"  {'rule update' if what == 'update' else 'remote join'} at {AIM_SIZE} "
                  f"endpoints: p50 {p50:.0f} ms (aim < 100 ms: "
                  f"{'met' if p50 < 100 else 'MISSED'})")
    first, last = rows[0], rows[-1]
    print(f"  per-change CPU, {last['size']} vs {first['size']} endpoints: "
          f"{last['cpu'] / first['cpu']:.2f}x (flat: ~1x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
