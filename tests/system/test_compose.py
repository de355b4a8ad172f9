"""The docker-compose development stack, as a developer runs it.

`make compose-up` against a private Docker engine of the test's own
(``tools.compose_engine.PrivateEngine``: root network namespace, so that the image
build reaches the package mirrors; no iptables, NAT or forwarding changes on
the machine), then workloads on both nodes with `docker-compose exec <node>
calicoctl ...`, pings across them, and `make compose-down`. The engine is
stopped by its PID whatever happens. What stays, on purpose: the engine's
image cache (``DATA_ROOT/compose-test``, ~400 MB) and the debootstrap
tarball (``CACHE``, ~160 MB), so that a second run builds nothing; `python3
-m tools.compose purge` removes both.

Cold (no cache: debootstrap, image build) it takes 2 to 3 minutes on two
cores; warm, about 30 seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.system.helpers import wait_for
from tools.compose import NODES, Stack
from tools.compose_engine import PrivateEngine

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "calico-py-test"


def make(target: str, env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(["make", "-s", target], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def stack():
    """The compose stack up on a private engine; everything removed afterwards."""
    engine = PrivateEngine("compose-test")
    env = {**os.environ, "DOCKER_HOST": engine.url, "COMPOSE_PROJECT_NAME": PROJECT}
    env.pop("BASE_IMAGE", None)
    with engine.exclusive():
        try:
            engine.start()
            engine.clear()          # whatever a killed run left in it
            make("compose-up", env, timeout=900)
            yield Stack(engine.url, PROJECT)
        finally:
            try:
                make("compose-down", env, timeout=120)
            finally:
                engine.clear()
                engine.stop()


def calicoctl(stack: Stack, node: str, *args: str, quick: bool = False) -> str:
    """`docker-compose exec <node> calicoctl args...` (as a user would), or with
    ``quick``, the same through `docker exec` (for polling)."""
    return stack.exec(node, "calicoctl", *args, quick=quick).stdout


def node_address(stack: Stack, node: str) -> str:
    out = stack.exec(node, "ip", "-4", "-o", "addr", "show", "dev", "eth0", quick=True).stdout
    return out.split()[3].split("/")[0]


def add_workload(stack: Stack, node: str, name: str) -> str:
    """A network namespace inside the node container, given an address; returns it."""
    stack.exec(node, "ip", "netns", "add", name, quick=True)
    out = calicoctl(stack, node, "container", "add", f"netns:{name}", "auto")
    match = re.search(rf"IP (\S+) added to netns:{name}", out)
    assert match, out
    return match.group(1)


def can_ping(stack: Stack, node: str, workload: str, ip: str) -> bool:
    return stack.exec(node, "ip", "netns", "exec", workload, "ping", "-c", "1", "-W", "1", ip,
                      check=False, quick=True).returncode == 0


def test_workloads_on_two_nodes_reach_each_other(stack):
    # Each node registered the address it has on the compose network, and they peer.
    addresses = {node: node_address(stack, node) for node in NODES}
    assert len(set(addresses.values())) == 2
    nodes = calicoctl(stack, "node1", "shownodes")
    for node, ip in addresses.items():
        assert re.search(rf"\|\s*{node}\s*\|\s*{re.escape(ip)}\s*\|", nodes), nodes
    for node in NODES:
        wait_for(f"{node}'s BGP session",
                 lambda: "Established" in calicoctl(stack, node, "status", quick=True),
                 timeout=60)

    ips = {"w1": add_workload(stack, "node1", "w1"), "w2": add_workload(stack, "node2", "w2")}
    assert calicoctl(stack, "node1", "profile", "add", "NET").strip() == "Created profile NET"
    calicoctl(stack, "node1", "profile", "NET", "member", "add", "netns:w1")
    calicoctl(stack, "node2", "profile", "NET", "member", "add", "netns:w2")

    # Routes arrive over BGP within seconds; then traffic flows both ways.
    wait_for("w1 -> w2", lambda: can_ping(stack, "node1", "w1", ips["w2"]), timeout=30)
    assert can_ping(stack, "node2", "w2", ips["w1"])
    route = stack.exec("node1", "ip", "route", "show", "proto", "bird", quick=True).stdout
    assert f"via {addresses['node2']}" in route, route

    # Two replicas of each service: with one IPAM replica dead, a node's
    # endpoint service and calicoctl carry on with the other.
    stack.compose("kill", "ipam")
    w3 = add_workload(stack, "node1", "w3")
    assert w3 not in ips.values()
    assert w3 in calicoctl(stack, "node1", "ipam", "show", f"--ip={w3}")
