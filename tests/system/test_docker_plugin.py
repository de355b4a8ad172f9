"""Calico on Docker through the plugin: real dockerd engines, one per simulated
host, each host running `calicoctl node` (which starts the plugin)."""

import pytest

from tests.cli import ok
from tests.system.conftest import POOL4, POOL6
from tests.system.helpers import allocated, established, inspect, pings, reaches, wait_for
from tools.docker_engine import IMAGE


def network(host, name, *extra):
    host.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico-ipam",
                *extra, name)


def run(host, name, net, *extra):
    host.docker("run", "-d", "--name", name, "--net", net, *extra, IMAGE, "sleep", "3600")
    return address(host, name, net)


def address(host, name, net, key="IPAddress"):
    return inspect(host, name)["NetworkSettings"]["Networks"][net][key]


@pytest.fixture
def two_hosts(lab, pools):
    a = lab.add_host("a", node=True, docker=True)
    b = lab.add_host("b", node=True, docker=True)
    for host in (a, b):
        for net in ("web", "db"):
            network(host, net)
    wait_for("BGP sessions", lambda: established(a, 1) and established(b, 1))
    return a, b


def test_same_network_reaches_across_hosts_other_networks_do_not(two_hosts, ipam_client,
                                                                  calicoctl):
    a, b = two_hosts
    web1, web2 = run(a, "web1", "web"), run(b, "web2", "web")
    db1 = run(b, "db1", "db")
    for ip in (web1, web2, db1):
        assert ip.startswith("10.20."), ip
    reaches(a, "web1", web2)
    reaches(b, "web2", web1)
    assert not pings(a, "web1", db1) and not pings(b, "db1", web2)
    # The profile is the network's; calicoctl shows the container's endpoint.
    shown = a.calicoctl("container", "show").stdout
    assert web1 in shown and "web" in shown, shown

    # Stop and start: working again, with an address from the pool.
    b.docker("stop", "-t", "1", "web2")
    b.docker("start", "web2")
    web2 = address(b, "web2", "web")
    reaches(a, "web1", web2)

    # docker rm releases every address.
    for host, name in ((a, "web1"), (b, "web2"), (b, "db1")):
        host.docker("rm", "-f", name)
    wait_for("addresses released", lambda: allocated(ipam_client) == 0)
    ok(calicoctl("ipam", "check"))


def test_fixed_addresses_ipv6_and_bad_input(two_hosts, ipam_client):
    a, b = two_hosts
    network(a, "fixed", "--subnet", POOL4)
    network(b, "fixed", "--subnet", POOL4)
    ip = run(a, "f1", "fixed", "--ip", "10.20.200.7")
    assert ip == "10.20.200.7"
    run(b, "f2", "fixed", "--ip", "10.20.200.8")
    reaches(b, "f2", "10.20.200.7")
    # A pinned address survives stop/start.
    a.docker("stop", "-t", "1", "f1")
    a.docker("start", "f1")
    assert address(a, "f1", "fixed") == "10.20.200.7"
    reaches(b, "f2", "10.20.200.7")
    before = allocated(ipam_client)

    taken = a.docker("run", "--rm", "--net", "fixed", "--ip", "10.20.200.8", IMAGE, "true",
                     check=False)
    assert taken.returncode != 0
    assert "10.20.200.8 is already assigned" in taken.stderr
    outside = a.docker("run", "--rm", "--net", "fixed", "--ip", "10.99.0.1", IMAGE, "true",
                       check=False)
    assert outside.returncode != 0 and "10.99.0.1" in outside.stderr
    bad_subnet = a.docker("network", "create", "--driver", "calico", "--ipam-driver",
                          "calico-ipam", "--subnet", "10.99.0.0/16", "nopool", check=False)
    assert bad_subnet.returncode != 0
    assert "Subnet 10.99.0.0/16 is not a Calico pool" in bad_subnet.stderr
    no_ipam = a.docker("network", "create", "--driver", "calico", "plain", check=False)
    assert no_ipam.returncode != 0 and "--ipam-driver calico-ipam" in no_ipam.stderr
    network(a, "my-net")
    dashed = a.docker("run", "--rm", "--net", "my-net", IMAGE, "true", check=False)
    assert dashed.returncode != 0
    assert "Docker network my-net cannot be a Calico profile" in dashed.stderr
    assert allocated(ipam_client) == before

    # IPv6.
    for host in (a, b):
        network(host, "six", "--ipv6", "--subnet", POOL6)
    a.docker("run", "-d", "--name", "s1", "--net", "six", IMAGE, "sleep", "3600")
    b.docker("run", "-d", "--name", "s2", "--net", "six", IMAGE, "sleep", "3600")
    v6a = address(a, "s1", "six", "GlobalIPv6Address")
    assert v6a.startswith(POOL6.split("::")[0])
    reaches(b, "s2", v6a)


def test_node_restart_keeps_containers_and_comes_back(two_hosts):
    a, b = two_hosts
    web1, web2 = run(a, "web1", "web"), run(b, "web2", "web")
    reaches(a, "web1", web2)
    # A crash: the dataplane and the peers' routes (graceful restart) stay.
    a.crash_node()
    assert pings(b, "web2", web1)
    a.start_calico_node()
    wait_for("BGP sessions", lambda: established(a, 1))
    reaches(b, "web2", web1)
    assert address(a, "web1", "web") == web1
    # A clean stop withdraws the host's routes; starting again brings them back.
    a.stop_node()
    a.start_calico_node()
    reaches(b, "web2", web1)

    def started():
        a.docker("rm", "-f", "web3", check=False)
        return a.docker("run", "-d", "--name", "web3", "--net", "web", IMAGE, "sleep", "3600",
                        check=False).returncode == 0
    wait_for("docker run after the node restart", started)
    reaches(b, "web2", address(a, "web3", "web"))
