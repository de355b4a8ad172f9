"""Workloads on one simulated host, with real namespaces, etcd, IPAM and endpoint service."""

import os
import subprocess
import time
from concurrent import futures

import grpc
import pytest

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calicopy.datastore import keys
from calicopy import rpc
from tests.cli import fails


@pytest.fixture
def host(lab, ipam_client):
    from calico.ipam.v1 import ipam_pb2
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.20.0.0/16"))
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="fd80:24e2:f998:72d6::/64"))
    return lab.add_host("host1")


def test_two_workloads_reach_each_other_and_their_host(host):
    w1 = host.add_workload("w1")
    w2 = host.add_workload("w2")
    w1.assert_can_ping(w2.ip)
    w2.assert_can_ping(w1.ip)
    w1.assert_can_ping(host.ip)
    assert host.ns.run("ping", "-c1", "-W1", w1.ip, check=False).returncode == 0


def test_three_addresses_then_remove_one(host):
    peer = host.add_workload("peer", "auto", "fd80:24e2:f998:72d6::20")
    w = host.add_workload("multi", "10.20.0.10", "10.20.0.11", "fd80:24e2:f998:72d6::10")
    assert len(w.ips) == 3
    v6 = next(ip for ip in w.ips if ":" in ip)
    for ip in w.ips:
        peer.assert_can_ping(ip)

    result = host.calicoctl("container", w.ref, "ip", "remove", "10.20.0.10")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"IP 10.20.0.10 removed from {w.ref}\n"
    peer.assert_cant_ping("10.20.0.10")
    peer.assert_can_ping("10.20.0.11")
    peer.assert_can_ping(v6)


def test_container_remove_leaves_nothing(host, store, ipam_client):
    w = host.add_workload("gone", "auto", "ipv6")
    shown = host.calicoctl("container", "show").stdout
    assert w.ref.split(":", 1)[1] in shown
    host_if = next(line.split("|")[3].strip() for line in shown.splitlines()
                   if w.ns.name in line)
    assert host_if.startswith("cali") and host_if in host.ns.run("ip", "link").stdout

    result = host.calicoctl("container", "remove", w.ref)
    assert (result.returncode, result.stdout) == (0, f"Removed Calico interface from {w.ref}\n")
    assert host_if not in host.ns.run("ip", "link").stdout
    routes = host.routes() + host.routes(v6=True)
    assert all(ip not in routes for ip in w.ips)
    assert store.list(keys.node_endpoints_prefix("host1")) == []
    assert all(not ipam_client.get_allocation(ip=ip).allocated for ip in w.ips)
    assert "no problems found" in host.calicoctl("ipam", "check").stdout
    fails(host.calicoctl("container", "remove", w.ref),
          f"Container {w.ref} doesn't contain any endpoints.")


def test_bad_input_and_messages(host, lab, ipam_client):
    w = host.add_workload("w1", "10.20.0.5")
    from tools.lab import Namespace
    other = Namespace(lab, f"{lab.prefix}-other")
    ref = f"netns:{other.name}"
    fails(host.calicoctl("container", "add", w.ref, "auto"),
          f"{w.ref} has already been configured with Calico Networking.")
    fails(host.calicoctl("container", "add", w.ref, "10.20.0.5"),
          f"{w.ref} has already been configured with Calico Networking.")
    fails(host.calicoctl("container", "add", "netns:nonexistent", "auto"),
          "Container netns:nonexistent not found.")
    fails(host.calicoctl("container", "add", "netns:/etc/hostname", "auto"),
          "/etc/hostname is not a network namespace.")
    fails(host.calicoctl("container", "add", ref, "10.99.0.1"),
          "10.99.0.1 is not in any configured pool.")
    fails(host.calicoctl("container", "add", ref, "10.20.0.5"),
          "IP address 10.20.0.5 is already assigned in pool 10.20.0.0/16.")
    fails(host.calicoctl("container", "add", ref, "10.20.0.300"), "Invalid IP address specified.")
    fails(host.calicoctl("container", "add", ref, "auto", "--interface=averyveryverylongname"),
          "Invalid interface name 'averyveryverylongname': use 1-15 letters, digits, '.', '_' "
          "or '-'.")
    other.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    fails(host.calicoctl("container", "add", ref, "auto"),
          f"Interface eth0 already exists in {ref}.")
    fails(host.calicoctl("container", w.ref, "ip", "remove", "10.20.0.99"),
          "IP address is not assigned to container. Aborting.")
    fails(host.calicoctl("container", "add", "pid:999999", "auto"),
          "pid:999999 is not currently running.")
    # Nothing of that changed anything: one endpoint, one address, a clean check.
    usage = ipam_client.get_usage()
    assert sum(p.allocated for p in usage.pools) == 1
    assert "no problems found" in host.calicoctl("ipam", "check").stdout


def test_ipv6_refused_on_a_node_without_ipv6(lab, ipam_client):
    from calico.ipam.v1 import ipam_pb2
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="fd80::/64"))
    host = lab.add_host("v4only", ipv6=False)
    from tools.lab import Namespace
    ns = Namespace(lab, f"{lab.prefix}-x")
    fails(host.calicoctl("container", "add", f"netns:{ns.name}", "fd80::5"),
          "This node is not configured for IPv6.")


def test_mtu_on_both_veth_ends_and_kept_by_reconcile(host, lab):

    from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
    from tests.system.helpers import wait_for
    from tools.lab import Namespace
    ns = Namespace(lab, f"{lab.prefix}-mtu")

    def mtu(where, name):
        return where.run("cat", f"/sys/class/net/{name}/mtu").stdout.strip()

    with rpc.channel(host.endpoint_addr) as channel:
        stub = endpoint_pb2_grpc.EndpointServiceStub(channel)
        ep = stub.AddEndpoint(endpoint_pb2.AddEndpointRequest(
            orchestrator="netns", workload_id=ns.name, netns_path=ns.path, auto_ipv4=1,
            auto_ipv6=1, mtu=1400), timeout=30).endpoint
        try:
            assert ep.mtu == 1400
            assert (mtu(ns, "eth0"), mtu(host.ns, ep.host_interface)) == ("1400", "1400")
            # Changed behind the service's back: its reconcile (every 2 s here) sets it again.
            ns.run("ip", "link", "set", "eth0", "mtu", "1500")
            wait_for("the MTU set again", lambda: mtu(ns, "eth0") == "1400")
            assert ep.ipv6_nets and ep.ipv6_nets[0].split("/")[0] in \
                ns.run("ip", "-6", "addr", "show", "dev", "eth0").stdout
        finally:
            stub.RemoveEndpoint(endpoint_pb2.RemoveEndpointRequest(
                orchestrator="netns", workload_id=ns.name), timeout=30)


def test_container_show_gives_the_ids_endpoint_commands_take(host):
    """`calicoctl endpoint --help` says the ids are shown by `container show`."""
    assert "container show" in host.calicoctl("endpoint", "--help").stdout
    w = host.add_workload("w-ids")
    shown = host.calicoctl("container", "show").stdout
    header = next(line for line in shown.splitlines() if "Container" in line)
    column = [c.strip() for c in header.split("|")].index("Endpoint ID")
    row = next(line for line in shown.splitlines() if w.ns.name in line)
    ep_id = row.split("|")[column].strip()
    assert len(ep_id) == 32, shown
    added = host.calicoctl("profile", "add", "IDS")
    assert added.returncode == 0, added.stderr
    appended = host.calicoctl("endpoint", ep_id, "profile", "append", "IDS")
    assert (appended.returncode, appended.stdout) == (0, f"Profiles of endpoint {ep_id}: IDS\n")
    assert host.calicoctl("endpoint", ep_id, "profile", "show").stdout == "IDS\n"


def _default_routes(host=None) -> str:
    argv = ["ip", "-4", "route", "show", "default"]
    return (host.ns.run(*argv) if host else subprocess.run(
        argv, capture_output=True, text=True, check=True)).stdout


def test_the_hosts_namespace_and_what_is_no_namespace_are_refused_at_once(host, tmp_path):
    """The host's own namespace (by pid or path, the node's and PID 1's) and a
    file that is not a namespace (a FIFO, which an open would wait on) are
    refused within a second, without tying up the service."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    service = host.proc.pid             # the endpoint service, in the host's namespace
    before = (_default_routes(host), _default_routes(), host.ns.run("ip", "link").stdout)
    host_net = "is using host networking; Calico cannot network it."
    for ref, messages in [
            ("pid:1", {f"pid:1 {host_net}", "/proc/1/ns/net cannot be opened: Permission "
                       "denied."}),     # the latter where PID 1 is beyond this root's reach
            ("netns:/proc/1/ns/net", {f"netns:/proc/1/ns/net {host_net}", "/proc/1/ns/net "
                                      "cannot be opened: Permission denied."}),
            (f"pid:{service}", {f"pid:{service} {host_net}"}),
            (f"netns:/proc/{service}/ns/net", {f"netns:/proc/{service}/ns/net {host_net}"}),
            (f"netns:{host.ns.name}", {f"netns:{host.ns.name} {host_net}"}),   # a bind mount
            (f"netns:{fifo}", {f"{fifo} is not a network namespace."})]:
        result = host.calicoctl("container", "add", ref, "auto")
        assert result.returncode == 1 and result.stderr.strip() in messages, (ref, result)
    # Each within a second, many at once (more than the service has workers).
    with rpc.channel(host.endpoint_addr) as channel:
        stub = endpoint_pb2_grpc.EndpointServiceStub(channel)

        def add(i):
            request = endpoint_pb2.AddEndpointRequest(
                orchestrator="netns", workload_id=f"w{i}", auto_ipv4=1,
                **({"netns_path": str(fifo)} if i % 2 else {"pid": service}))
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.AddEndpoint(request, timeout=5)
            return info.value.code(), time.monotonic() - started
        with futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(add, range(24)))
    assert {code for code, _ in answers} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert max(took for _, took in answers) < 1, answers
    assert rpc.check_health(host.endpoint_addr)
    assert (_default_routes(host), _default_routes(), host.ns.run("ip", "link").stdout) == before
    assert host.calicoctl("container", "show").stdout.count("netns:") == 0
