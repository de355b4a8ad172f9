"""Killing a node in the middle of its policy agent's pass and of its
renderer's reconfiguration of BIRD (at their failpoints, calicopy.failpoints)
loses nothing: once the node runs again, the kernel and BIRD are as etcd
says, and adds (which wait for the agent's progress) work. One node run
stops at both processes' failpoints, before or after their writes."""

import json

import pytest

from tests.cli import ok
from tests.system.helpers import wait_for

DENY_ALL = {"id": "net", "inbound_rules": [{"action": "deny"}],
            "outbound_rules": [{"action": "allow"}]}
MEMBERS = {"id": "net", "inbound_rules": [{"action": "allow", "src_tag": "net"},
                                          {"action": "deny"}],
           "outbound_rules": [{"action": "allow"}]}
PEER = "172.30.0.251"


def reached(host, log, failpoint):
    return f"failpoint {failpoint} reached" in host.paths.log(log).read_text()


@pytest.mark.parametrize("when", ["before", "after"])
def test_agent_and_renderer_killed_mid_write(lab, pools, when):
    agent_fp, renderer_fp = f"policy-{when}-restore", f"renderer-{when}-configure"
    host = lab.add_host("mid", node=True)
    w1 = host.add_workload("w1", profiles=("net",))
    w2 = host.add_workload("w2", profiles=("net",))
    w1.assert_can_ping(w2.ip)

    host.stop_node()
    host.start_calico_node(failpoints=f"{agent_fp},{renderer_fp}")
    wait_for("both failpoints", lambda: reached(host, "policy", agent_fp) and
             reached(host, "renderer", renderer_fp))
    # Changes the stuck processes cannot act on.
    ok(host.calicoctl("profile", "net", "rule", "update", input=json.dumps(DENY_ALL)))
    ok(host.calicoctl("bgp", "peer", "add", PEER, "as", "65000"))
    host.crash_node()                        # kill -9, mid-write
    host.start_calico_node()

    wait_for("the rule changed meanwhile", lambda: not w1.ping(w2.ip))
    wait_for("BIRD to peer as etcd says", lambda: PEER in host.calicoctl("status").stdout)
    assert PEER in host.paths.bird_conf.read_text()
    ok(host.calicoctl("profile", "net", "rule", "update", input=json.dumps(MEMBERS)))
    w3 = host.add_workload("w3", profiles=("net",))      # waits for the agent's progress
    w3.assert_can_ping(w1.ip)
    w1.assert_can_ping(w2.ip)
