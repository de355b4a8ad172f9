"""calicoctl node, bgp, bgppeer, shownodes, diags and reset: messages and exit codes."""

import tarfile

import pytest

from calico.ipam.v1 import ipam_pb2
from calicopy.datastore import keys
from tests.cli import fails


@pytest.fixture
def host(lab, ipam_client):
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.20.0.0/16"))
    return lab.add_host("h1", node=True, ipv6=False)


def test_bad_input(host):
    fails(host.calicoctl("node", "--ip=172.30.0.300"),
          "Invalid IPv4 address specified with --ip argument.")
    fails(host.calicoctl("node", f"--ip={host.ip}", "--ip6=172.30.0.2"),
          "Invalid IPv6 address specified with --ip6 argument.")
    fails(host.calicoctl("node", f"--ip={host.ip}", "--as=banana"), "Invalid AS Number specified.")
    fails(host.calicoctl("bgp", "default-node-as", "0"), "Invalid AS Number specified.")
    fails(host.calicoctl("bgppeer", "rr", "add", "1.2.3"), "1.2.3 is not a valid IP address.")
    fails(host.calicoctl("bgp", "peer", "add", host.ip, "as", "65000"),
          f"{host.ip} is the address of node h1 itself.")
    fails(host.calicoctl("node", "bgp", "peer", "add", host.ip, "as", "65000"),
          f"{host.ip} is the address of node h1 itself.")
    fails(host.calicoctl("bgp", "peer", "remove", "172.30.0.99"),
          "172.30.0.99 is not a configured BGP peer.")
    assert host.calicoctl("bgp", "peer", "show").stdout == \
        "No IPv4 BGP Peers defined.\nNo IPv6 BGP Peers defined.\n"


def test_node_twice_is_idempotent_and_settings(host):
    again = host.calicoctl("node", f"--ip={host.ip}")
    assert again.returncode == 0
    assert again.stdout.strip() == "Calico node h1 is already running; nothing changed."
    assert host.calicoctl("bgp", "default-node-as").stdout == "64511\n"
    assert host.calicoctl("bgp", "default-node-as", "64512").returncode == 0
    assert host.calicoctl("bgp", "default-node-as").stdout == "64512\n"
    nodes = host.calicoctl("shownodes")
    assert nodes.returncode == 0 and "| h1 " in nodes.stdout and host.ip in nodes.stdout


def test_shownodes_diags_and_reset(host, lab, tmp_path, store):
    w = host.add_workload("w1")
    detailed = host.calicoctl("shownodes", "--detailed").stdout
    assert w.ref.split(":", 1)[1] in detailed and w.ip in detailed
    assert "| h1   | netns         | 1 " in host.calicoctl("shownodes").stdout

    diags = host.calicoctl("diags", f"--output={tmp_path}")
    assert diags.returncode == 0, diags.stderr
    path = diags.stdout.strip().rsplit(" ", 1)[1]
    names = tarfile.open(path).getnames()
    for part in ("node/bird.conf", "node/endpoint.log", "ip-route.txt",
                 "birdc-show-protocols.txt", "etcd-dump.json"):
        assert any(n.endswith(part) for n in names), part

    refused = host.calicoctl("reset", input="")
    fails(refused, "Refusing to reset without confirmation; add --yes.")
    host.calicoctl("container", "remove", w.ref)
    host.calicoctl("node", "stop")
    done = host.calicoctl("reset", "--yes")
    assert done.returncode == 0 and "all calico-py data is gone" in done.stdout
    assert store.list("/calico/") == []


def test_node_remove_on_the_host_where_it_runs(host, ipam_client, store):
    """The node alive, removed from its own host: its workloads' endpoints go
    through its endpoint service, its processes stop, its block and records go."""
    w = host.add_workload("w1")
    result = host.calicoctl("node", "remove", "--name=h1")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "Removed node h1: released 1 address(es) and freed 1 block(s).\n"
    assert host.supervisor_pid() is None
    assert "cali" not in host.ns.run("ip", "link").stdout
    assert "eth0" not in w.ns.run("ip", "link").stdout
    assert store.list(keys.host("h1")) == [] and store.list(keys.AFFINITIES) == []
    assert not ipam_client.get_allocation(ip=w.ip).allocated
    check = host.calicoctl("ipam", "check")
    assert check.returncode == 0 and "no problems found" in check.stdout
