"""No address is handed out twice by mistake: `ipam release` refuses a live
workload's address unless forced, `pool remove --force` names the endpoints
that use the pool, and `ipam check` compares endpoints with allocations both
ways. Real etcd and IPAM service, calicoctl as a user runs it; the workloads
are made by the endpoint service's own code (EndpointManager) over a fake
kernel, which does not matter here."""

import pytest

from calicopy.api.ipam import IpamClient
from calicopy.model.endpoint import endpoint_id
from services.endpoint.endpoints import AddRequest, EndpointManager
from tests.cli import fails, ok
from tests.fakes import FakeDataplane

NODE = "node-1"


@pytest.fixture
def workloads(store, ipam_addr, calicoctl):
    ok(calicoctl("pool", "add", "10.20.0.0/24"))
    dataplane = FakeDataplane()
    ipam = IpamClient(ipam_addr)
    manager = EndpointManager(store, ipam, dataplane, NODE)

    def add(name, **kw):
        dataplane.namespaces[f"/var/run/netns/{name}"] = set()
        return manager.add(AddRequest(orchestrator="netns", workload_id=f"netns:{name}",
                                      netns_path=f"/var/run/netns/{name}", **kw))
    try:
        yield add, manager
    finally:
        ipam.close()


def described(ep):
    return f"endpoint {ep.endpoint_id} (netns workload {ep.workload_id} on node {NODE})"


def test_a_live_workloads_address_is_released_only_by_force(calicoctl, workloads):
    add, manager = workloads
    web1 = add("web1", auto_ipv4=1)
    ip = web1.ips[0]
    fails(calicoctl("ipam", "release", f"--ip={ip}"),
          f"{ip} is in use by {described(web1)}; remove the workload first, or run "
          f"'calicoctl ipam release --ip={ip} --force' to free it anyway.")
    assert "It is allocated to handle node-1/netns/netns:web1" in \
        ok(calicoctl("ipam", "show", f"--ip={ip}"))
    assert ok(calicoctl("ipam", "release", f"--ip={ip}", "--force")) == f"Released {ip}.\n"

    check = calicoctl("ipam", "check")
    assert check.returncode == 1
    assert f"  [endpoint-address-not-allocated] Endpoint {web1.endpoint_id} (netns workload " \
           f"netns:web1 on node {NODE}) uses {ip}, which is not allocated; remove the " \
           "workload and add it again ('calicoctl container remove netns:web1' on node " \
           f"{NODE}).\n" in check.stdout

    # A second workload then gets the address: the check names the clash.
    web2 = add("web2", ips=[ip])
    check = calicoctl("ipam", "check")
    assert check.returncode == 1 and check.stdout.count("[endpoint-address-not-allocated]") == 1
    assert f"uses {ip}, which is allocated to handle node-1/netns/netns:web2 (endpoint " \
           f"{web2.endpoint_id}): two workloads hold it; remove the workload" in check.stdout
    manager.remove("netns", "netns:web1")
    manager.remove("netns", "netns:web2")
    assert "no problems found" in ok(calicoctl("ipam", "check"))


def test_pool_remove_names_the_endpoints_that_use_the_pool(calicoctl, workloads):
    add, _ = workloads
    web1 = add("web1", auto_ipv4=1)
    fails(calicoctl("pool", "remove", "10.20.0.0/24"),
          f"Pool 10.20.0.0/24 still has 1 allocated address(es), in use by {described(web1)}; "
          "release them first, or force the removal to drop them. Use 'calicoctl pool remove "
          "10.20.0.0/24 --force'.")
    result = calicoctl("pool", "remove", "10.20.0.0/24", "--force")
    assert result.returncode == 0
    assert result.stdout == "Removed pool 10.20.0.0/24 and released 1 allocated address(es).\n"
    assert result.stderr == (
        f"WARNING: {described(web1)} still uses {web1.ips[0]}, which lies in no pool now: "
        "remove its workload.\n")


def test_check_reports_an_allocation_whose_owner_is_gone(calicoctl, ipam_client):
    ok(calicoctl("pool", "add", "10.20.0.0/24"))
    ep_id = endpoint_id(NODE, "netns", "netns:gone", "eth0")
    ip = ipam_client.auto_assign(num_ipv4=1, handle_id="node-1/netns/netns:gone",
                                 hostname=NODE, attributes={"node": NODE, "endpoint": ep_id}
                                 ).ipv4[0]
    check = calicoctl("ipam", "check")
    assert check.returncode == 1
    assert check.stdout == (
        "Checked 1 block(s) and 1 handle(s): 1 problem(s) found.\n"
        f"  [allocation-without-owner] {ip} is allocated to handle node-1/netns/netns:gone, "
        f"whose owner (endpoint {ep_id} of node {NODE}) no longer exists; the garbage "
        f"collector releases it after its grace period, or run 'calicoctl ipam release "
        f"--ip={ip}'.\n")
    assert ok(calicoctl("ipam", "release", f"--ip={ip}")) == f"Released {ip}.\n"
    assert "no problems found" in ok(calicoctl("ipam", "check"))
