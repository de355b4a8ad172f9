"""Killing the endpoint service in the middle of an add loses nothing and leaks nothing."""

import subprocess
import sys

import pytest

from calico.ipam.v1 import ipam_pb2
from calicopy.datastore import keys
from tests.system.helpers import wait_for
from tools.lab import ROOT, Namespace


@pytest.mark.parametrize("failpoint", ["endpoint-add-after-claim", "endpoint-add-after-kernel"])
def test_kill_mid_add_then_restart(lab, ipam_client, store, failpoint):
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.20.0.0/16"))
    host = lab.add_host("crashy")
    host.stop_node()
    host.start_node(failpoints=failpoint)
    victim = Namespace(lab, f"{lab.prefix}-victim")
    ref = f"netns:{victim.name}"

    add = subprocess.Popen(
        ["ip", "netns", "exec", host.ns.name, sys.executable, "-m", "cli.calicoctl", "container",
         "add", ref, "auto"], cwd=ROOT, env={**host.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the add to claim its address",
                 lambda: ipam_client.get_usage().pools[0].allocated == 1)
        if failpoint.endswith("kernel"):
            wait_for("the interface", lambda: "eth0" in victim.run("ip", "link").stdout)
        host.stop_node(kill=True)
        assert add.wait(timeout=30) == 1
    finally:
        if add.poll() is None:
            add.kill()

    host.start_node()          # start-up reconcile
    assert store.list(keys.node_endpoints_prefix("crashy")) == []
    assert "cali" not in host.ns.run("ip", "link").stdout
    assert "eth0" not in victim.run("ip", "link").stdout
    assert ipam_client.get_usage().pools[0].allocated == 0
    check = host.calicoctl("ipam", "check")
    assert check.returncode == 0 and "no problems found" in check.stdout

    # And the workload can be networked for real now.
    result = host.calicoctl("container", "add", ref, "auto")
    assert result.returncode == 0, result.stderr
