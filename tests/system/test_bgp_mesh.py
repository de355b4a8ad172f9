"""Several hosts running `calicoctl node`: BGP with real BIRD, cross-host traffic."""

import os
import re
import signal
import subprocess
import time

from tests.system.helpers import NET, block_routes, established, wait_for
from tools.lab import assert_connectivity


def test_three_hosts_full_mesh(lab, pools):
    hosts = [lab.add_host(f"h{i}", node=True) for i in range(1, 4)]
    for h in hosts:
        wait_for(f"{h.name} sessions", lambda h=h: established(h, 4))   # 2 peers x v4/v6
    status = hosts[0].calicoctl("status")
    assert status.returncode == 0
    assert "IPv4 BGP status" in status.stdout and "node-to-node mesh" in status.stdout
    workloads = [h.add_workload(f"w{h.name}", "auto", "ipv6", profiles=NET) for h in hosts]
    reach = [(a, ip) for a in workloads for b in workloads if a is not b for ip in b.ips]
    assert_connectivity(reach)


def test_ipv6_and_node_stop_withdraws_routes(lab, pools, ipam_client):
    h1, h2 = lab.add_host("h1", node=True), lab.add_host("h2", node=True)
    w1 = h1.add_workload("w1", "auto", "ipv6", profiles=NET)
    w2 = h2.add_workload("w2", "auto", "ipv6", profiles=NET)
    assert_connectivity([(w1, ip) for ip in w2.ips] + [(w2, ip) for ip in w1.ips])
    wait_for("h1 to learn h2's blocks", lambda: len(block_routes(h1)) >= 1)
    assert any(w2.ips[0].rsplit(".", 1)[0] in r for r in block_routes(h1))

    refused = h2.calicoctl("node", "stop")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("Current host has active endpoints so can't be "
                                      "stopped. Force with --force")
    stopped = h2.calicoctl("node", "stop", "--force")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip().endswith("Node stopped and all configuration removed")
    wait_for("h2's routes to be withdrawn from h1",
             lambda: not block_routes(h1) and not block_routes(h1, v6=True))
    w1.assert_cant_ping(w2.ips[0])
    assert all(not ipam_client.get_allocation(ip=ip).allocated for ip in w2.ips)
    assert "h2" not in h1.calicoctl("shownodes").stdout


def test_bird_and_renderer_restart_without_interrupting_traffic(lab, pools):
    h1, h2 = lab.add_host("h1", node=True), lab.add_host("h2", node=True)
    w1, w2 = h1.add_workload("w1", profiles=NET), h2.add_workload("w2", profiles=NET)
    w1.assert_can_ping(w2.ip)
    wait_for("sessions", lambda: established(h1, 2))
    # A steady ping across hosts while BIRD on h1 is killed and comes back.
    flow = subprocess.Popen(["ip", "netns", "exec", w1.ns.name, "ping", "-i", "0.1", "-c",
                             "40", "-W", "1", w2.ip], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    bird_pid = h1.child_pid("bird")
    os.kill(bird_pid, signal.SIGKILL)
    wait_for("BIRD to be restarted", lambda: h1.child_pid("bird") not in (None, bird_pid))
    out, _ = flow.communicate(timeout=30)
    got = {int(m) for m in re.findall(r"icmp_seq=(\d+)", out)}
    assert " 0% packet loss" in out, f"lost: {sorted(set(range(1, 41)) - got)}"
    wait_for("sessions to come back", lambda: established(h1, 2))

    renderer_pid = h1.child_pid("bird renderer")
    os.kill(renderer_pid, signal.SIGKILL)
    wait_for("the renderer to be restarted",
             lambda: h1.child_pid("bird renderer") not in (None, renderer_pid))
    w3 = h2.add_workload("w3", "10.20.250.1", profiles=NET)   # a new block: needs the renderer
    wait_for("h1 to learn the new block",
             lambda: any(r.startswith("10.20.250.") for r in block_routes(h1)))
    w1.assert_can_ping(w3.ip)
    # calicoctl status shows the restarts.
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip()
            for line in h1.calicoctl("status").stdout.splitlines() if line.count("|") == 5}
    assert rows["bird"] == "1" and rows["bird renderer"] == "1"
