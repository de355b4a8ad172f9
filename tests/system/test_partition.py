"""A node cut off from etcd and the cluster services for 30 s keeps its
workloads' connectivity and policy, and a rule changed meanwhile is in its
kernel soon after the partition heals.

The lab's hosts reach etcd over a unix socket, which no packet filter can
cut; here the partitioned host reaches it on the underlay instead, through a
relay at the control plane's address (Lab.etcd_on_underlay), so dropping the
host's packets in the control plane's namespace cuts it from etcd and the
services alike, as a real network partition would (packets lost, not
connections refused). The host's own iptables are its policy agent's, so the
drop rules live on the control plane's side."""

import json
import time

from tests.cli import calicoctl, ok
from tests.system.helpers import wait_for

PARTITION = 30.0            # seconds: the scenario, not a bound on our code
OPEN = {"id": "net", "inbound_rules": [{"action": "allow"}],
        "outbound_rules": [{"action": "allow"}]}


def drop(lab, host, action):
    for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
        lab.control.run("iptables", action, chain, flag, host.ip, "-j", "DROP")


def test_partitioned_node_keeps_policy_and_catches_up(lab, pools):
    host = lab.add_host("part", node=True, etcd=lab.etcd_on_underlay())
    w1 = host.add_workload("w1", profiles=("net",))
    w2 = host.add_workload("w2", profiles=("net",))
    ok(host.calicoctl("profile", "add", "other"))
    outsider = host.add_workload("w3", profiles=("other",))   # not let into net
    w1.assert_can_ping(w2.ip)
    outsider.assert_cant_ping(w1.ip)

    drop(lab, host, "-I")
    try:
        assert host.ns.run("ping", "-c", "1", "-W", "1", lab.ipam.split(":")[0],
                           check=False).returncode != 0, "the partition leaks"
        # Meanwhile, from the operator's side: a rule the node cannot hear of.
        admin = {"CALICO_POLICY_ADDR": lab.unix["policy"], "CALICO_IPAM_ADDR": lab.unix["ipam"]}
        ok(calicoctl("profile", "net", "rule", "update", input=json.dumps(OPEN), env=admin))
        ends = time.monotonic() + PARTITION
        while time.monotonic() < ends:               # connectivity and policy hold
            w1.assert_can_ping(w2.ip, retries=3)
            outsider.assert_cant_ping(w1.ip)
    finally:
        drop(lab, host, "-D")
    wait_for("the rule changed during the partition to reach the kernel",
             lambda: outsider.ping(w1.ip))
    w1.assert_can_ping(w2.ip)
