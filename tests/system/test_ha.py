"""A replicated control plane (real processes): a 3-member etcd and two
replicas of each service, a simulated host running the whole node. Whatever
member or replica dies, workloads keep being added and policy keeps reaching
the kernel."""

import json
import time

import pytest

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import rpc
from tests.conftest import identity_files
from tools import launch
from tools.lab import Lab

DB = {"id": "DB", "inbound_rules": [{"action": "allow", "src_tag": "DB"}, {"action": "deny"}],
      "outbound_rules": [{"action": "allow"}]}


@pytest.fixture(scope="module")
def ha(pki_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ha")
    cluster = launch.EtcdCluster(tmp / "etcd", 3, tls=identity_files(pki_dir, "service:etcd"),
                                 admin=identity_files(pki_dir, "admin"))
    lab = None
    try:
        lab = Lab(tmp / "lab", cluster.unix_endpoints, pki_dir, replicas=2)
        with rpc.channel(lab.unix["ipam"]) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr="10.64.0.0/16")), timeout=30)
        with rpc.channel(lab.unix["policy"]) as ch:
            policy = policy_pb2_grpc.PolicyServiceStub(ch)
            for name in ("WEB", "DB"):
                policy.CreateProfile(policy_pb2.CreateProfileRequest(name=name), timeout=30)
        host = lab.add_host("h1", node=True)
        web = host.add_workload("web", profiles=("WEB",))
        db = host.add_workload("db", profiles=("DB",))
        yield cluster, lab, host, web, db
    finally:
        if lab is not None:
            lab.close()
        cluster.stop()


def wait_for(what, condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.1)


def test_with_an_ipam_replica_dead_calicoctl_and_the_endpoint_service_use_the_other(ha):
    _, lab, host, _, _ = ha
    for n, dead in enumerate((1, 2)):
        lab.kill_service("ipam", dead)
        try:
            workload = host.add_workload(f"replica{n}")     # endpoint service -> IPAM
            shown = host.calicoctl("ipam", "show", f"--ip={workload.ip}")     # calicoctl
            assert shown.returncode == 0 and workload.ip in shown.stdout, shown
        finally:
            lab.start_service("ipam", dead)       # back, and used again next round


def test_policy_reaches_the_kernel_whichever_etcd_member_dies(ha):
    """The leader first, then each other member in turn (one of them is the
    one the node's agent watches through): a rule change made after the kill
    is in the node's kernel, and a workload added then gets its policy."""
    cluster, lab, host, web, db = ha
    killed = []
    for n in range(len(cluster.members)):
        member = cluster.leader() if n == 0 else \
            next(m for m in cluster.members if m not in killed)
        cluster.kill(member)
        killed.append(member)
        try:
            port = 7000 + n
            with db.tcp_listen(port):
                assert not web.tcp_connect(db.ip, port)
                rules = dict(DB, inbound_rules=[{"action": "allow", "protocol": "tcp",
                                                 "src_tag": "WEB", "dst_ports": [port]}]
                             + DB["inbound_rules"])
                updated = host.calicoctl("profile", "DB", "rule", "update",
                                         input=json.dumps(rules))
                assert updated.returncode == 0, updated.stderr
                wait_for(f"tcp {port} open after {member.name} died",
                         lambda: web.tcp_connect(db.ip, port))
            late = host.add_workload(f"late{n}", profiles=("DB",))
            late.assert_can_ping(db.ip)
        finally:
            cluster.restart(member)
