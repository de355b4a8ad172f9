"""Killing a node in the middle of its policy agent's pass or its renderer's
reconfiguration of BIRD (at their failpoints, calicopy.failpoints) loses
nothing: once the node runs again, the kernel and BIRD are as etcd says, and
adds (which wait for the agent's progress) work."""

import json

import pytest

from tests.cli import ok
from tests.system.helpers import wait_for

DENY_ALL = {"id": "net", "inbound_rules": [{"action": "deny"}],
            "outbound_rules": [{"action": "allow"}]}
MEMBERS = {"id": "net", "inbound_rules": [{"action": "allow", "src_tag": "net"},
                                          {"action": "deny"}],
           "outbound_rules": [{"action": "allow"}]}


def reached(host, log, failpoint):
    return f"failpoint {failpoint} reached" in host.paths.log(log).read_text()


def restart_at(host, failpoint, log):
    host.stop_node()
    host.start_calico_node(failpoints=failpoint)
    wait_for(f"the {failpoint} failpoint", lambda: reached(host, log, failpoint))


@pytest.mark.parametrize("failpoint", ["policy-before-restore", "policy-after-restore"])
def test_policy_agent_killed_mid_pass(lab, pools, failpoint):
    host = lab.add_host("pa", node=True)
    w1 = host.add_workload("w1", profiles=("net",))
    w2 = host.add_workload("w2", profiles=("net",))
    w1.assert_can_ping(w2.ip)

    restart_at(host, failpoint, "policy")
    ok(host.calicoctl("profile", "net", "rule", "update", input=json.dumps(DENY_ALL)))
    host.crash_node()                        # kill -9, mid-pass
    host.start_calico_node()

    wait_for("the change made meanwhile", lambda: not w1.ping(w2.ip))
    ok(host.calicoctl("profile", "net", "rule", "update", input=json.dumps(MEMBERS)))
    w3 = host.add_workload("w3", profiles=("net",))      # waits for the agent's progress
    w3.assert_can_ping(w1.ip)
    w1.assert_can_ping(w2.ip)


@pytest.mark.parametrize("failpoint", ["renderer-before-configure",
                                       "renderer-after-configure"])
def test_renderer_killed_around_configure(lab, pools, failpoint):
    host = lab.add_host("rd", node=True)
    restart_at(host, failpoint, "renderer")
    ok(host.calicoctl("bgp", "peer", "add", "172.30.0.251", "as", "65000"))
    host.crash_node()
    host.start_calico_node()
    wait_for("BIRD to peer as etcd says",
             lambda: "172.30.0.251" in host.calicoctl("status").stdout)
    assert "172.30.0.251" in host.paths.bird_conf.read_text()
