"""Policy dataplane benchmark (make bench).

One node's policy agent (the real one, in a network namespace of its own,
programming real iptables and ipsets) against a real etcd holding 100
profiles with tag rules and endpoint records: 500 on this node and as many on
other nodes, so tags have cluster-wide members. The endpoint records are
written directly (no veths): what is measured is the agent and the kernel
tables, which do not depend on the interfaces existing.

Prints: the time for a rule update to be in the kernel (p50/p99 over 20
updates, from the etcd write until `iptables -S` in the node's namespace shows
the new rule; the agent confirms progress in etcd only for its own
endpoints' changes); the agent's start plus full resync; and the iptables
rule and ipset member counts as the node's endpoints grow from 100 to 1000.
"""

from __future__ import annotations

import re
import sys
import time

from common import control_plane, percentile
from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import Txn
from calicopy.model.endpoint import ACTIVE, Endpoint, endpoint_id
from node.policy.dataplane import profile_chain
from tools import launch
from tools.lab import Lab, Namespace

NODE, PROFILES, UPDATES = "bench-node", 100, 20


def profile_rules(i: int, extra_port: int | None = None) -> dict:
    inbound = [{"action": "allow", "src_tag": f"P{i}"},
               {"action": "allow", "protocol": "tcp", "src_tag": f"P{(i + 1) % PROFILES}",
                "dst_ports": [80, 443]}]
    if extra_port:
        inbound.append({"action": "allow", "protocol": "tcp", "dst_ports": [extra_port]})
    return {"id": f"P{i}", "inbound_rules": inbound + [{"action": "deny"}],
            "outbound_rules": [{"action": "allow"}]}


def write_endpoints(store, node: str, start: int, count: int, base: int) -> int:
    revision = 0
    for chunk in range(start, start + count, 50):
        txn = Txn()
        for n in range(chunk, min(chunk + 50, start + count)):
            ep = Endpoint(endpoint_id(node, "bench", f"w{base + n}", "eth0"), node, "bench",
                          f"w{base + n}", "eth0", "/none",
                          ACTIVE, f"02:00:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:"
                          f"{n & 255:02x}:01", profile_ids=[f"P{n % PROFILES}"])
            ep.set_ips([f"10.{160 + (base + n) // 65536}.{(base + n) // 256 % 256}."
                        f"{(base + n) % 256}"])
            txn.put(keys.endpoint(node, "bench", ep.workload_id, ep.endpoint_id), None,
                    ep.to_json())
        revision = store.commit(txn)
    return revision


def wait_applied(store, revision: int, timeout: float = 120) -> float:
    start = time.perf_counter()
    while True:
        kv = store.get(keys.policy_applied(NODE))
        if kv and kv.json()["revision"] >= revision:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"agent did not apply revision {revision} in {timeout}s")
        time.sleep(0.002)


def wait_in_kernel(ns: Namespace, profile: str, port: int, timeout: float = 120) -> float:
    """Seconds until the profile's inbound chain in the node's kernel allows ``port``."""
    chain, start = profile_chain(profile, "inbound"), time.perf_counter()
    rule = re.compile(rf"--dports (\S+,)?{port}(,|\s|$)", re.M)
    while not rule.search(ns.run("iptables", "-w", "-S", chain, check=False).stdout):
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"the rule for port {port} of {profile} is not in the kernel "
                               f"after {timeout}s")
    return time.perf_counter() - start


def counts(ns: Namespace) -> tuple[int, int]:
    rules = sum(ns.run(tool).stdout.count("\n-A ") for tool in ("iptables-save",
                                                                 "ip6tables-save"))
    members = sum(1 for line in ns.run("ipset", "save").stdout.splitlines()
                  if line.startswith("add cali"))
    return rules, members


def main() -> int:
    rows = []
    with control_plane("policy") as plane:
        tmp = plane.tmp
        store = EtcdStore.from_env(plane.etcd_tcp)
        Lab.remove_leftovers("benchpol")
        lab = Lab(tmp / "lab", plane.etcd_unix, plane.pki, prefix="benchpol")
        ns = Namespace(lab, "benchpol-node")
        agent = None
        try:
            for i in range(PROFILES):
                store.commit(Txn().put(keys.profile_tags(f"P{i}"), None, [f"P{i}"])
                             .put(keys.profile_rules(f"P{i}"), None, profile_rules(i)))
            write_endpoints(store, "elsewhere", 0, 500, base=100000)
            revision = write_endpoints(store, NODE, 0, 100, base=0)

            def start_agent():
                return launch.spawn(["ip", "netns", "exec", ns.name, sys.executable, "-m",
                                     "node.policy", f"--name={NODE}"], tmp / "agent.log",
                                    env={"ETCD_ENDPOINTS": plane.etcd_unix})
            agent = start_agent()
            wait_applied(store, revision)
            have = 100
            for target in (100, 250, 500, 1000):
                if target > have:
                    wait_applied(store, write_endpoints(store, NODE, have, target - have, 0))
                    have = target
                rules, members = counts(ns)
                rows.append((target, rules, members))
                if target == 500:
                    updates = []
                    for k in range(UPDATES):
                        name = f"P{k}"
                        store.commit(Txn().put(
                            keys.profile_rules(name), store.get(keys.profile_rules(name)),
                            profile_rules(k, extra_port=8000 + k)))
                        updates.append(wait_in_kernel(ns, name, 8000 + k))
                    launch.stop_pid(agent.pid)
                    store.commit(Txn().delete(store.get(keys.policy_applied(NODE))))
                    start = time.perf_counter()
                    agent = start_agent()
                    wait_applied(store, 1)
                    resync = time.perf_counter() - start
        finally:
            if agent is not None:
                launch.stop_pid(agent.pid)
            lab.close()
            store.close()

    print(f"Policy agent, one node, {PROFILES} profiles with tag rules, real iptables/ipsets")
    print(f"  rule update -> in the kernel at 500 endpoints: p50 "
          f"{percentile(updates, 50) * 1000:.0f} ms, p99 {percentile(updates, 99) * 1000:.0f} ms"
          f" over {UPDATES} updates (aim: p50 < 200 ms)")
    print(f"  agent start + full resync at 500 endpoints: {resync * 1000:.0f} ms")
    print(f"{'endpoints':>10} {'iptables rules':>15} {'rules/endpoint':>15} {'ipset members':>14}")
    for n, rules, members in rows:
        print(f"{n:>10} {rules:>15} {rules / n:>15.1f} {members:>14}")
    print("  (rules grow with endpoints + rules; tag members live in ipsets, not in rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
