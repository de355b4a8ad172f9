"""A 3-member etcd (real processes, TLS between members and to clients,
etcd's authentication on): clients fail over when a member dies, the
leader included, without losing or repeating a write."""

import re
import subprocess
import threading
import time

import pytest

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import config, rpc
from calicopy.datastore.etcd import EtcdStore
from tests.cli import calicoctl
from tests.conftest import identity_files
from tools import launch


@pytest.fixture(scope="module")
def cluster(pki_dir, tmp_path_factory):
    c = launch.EtcdCluster(tmp_path_factory.mktemp("etcd-cluster"), 3,
                           tls=identity_files(pki_dir, "service:etcd"),
                           admin=identity_files(pki_dir, "admin"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def whole(cluster):
    """The cluster with every member up again afterwards, and its data gone."""
    try:
        yield cluster
    finally:
        for member in cluster.members:
            if not member.running:
                cluster.restart(member)
        store = EtcdStore.from_env(cluster.endpoints)
        store.delete_prefix("/calico/")
        store.close()


def ipam_service(cluster, pki_dir, tmp_path, name="ipam"):
    files = identity_files(pki_dir, "service:ipam")
    env = {"CALICO_TLS_CA_FILE": str(files.ca), "CALICO_TLS_CERT_FILE": str(files.cert),
           "CALICO_TLS_KEY_FILE": str(files.key), "ETCD_CA_CERT_FILE": str(files.ca),
           "ETCD_CERT_FILE": str(files.cert), "ETCD_KEY_FILE": str(files.key)}
    addr = f"127.0.0.1:{launch.free_port()}"
    proc = launch.start_service("services.ipam", addr, cluster.endpoints,
                                tmp_path / f"{name}.log", env=env)
    return addr, proc


def members_used_by(cluster, pid):
    """The members process ``pid`` has a connection to."""
    out = subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    ports = {int(m.group(1)) for line in out.splitlines() if f"pid={pid}," in line
             for m in [re.search(r"127\.0\.0\.1\]?:(\d+)\s+users:", line)] if m}
    return [m for m in cluster.members if m.client_port in ports]


def wait_for(what, condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.02)


def test_allocations_ride_out_the_death_of_the_etcd_leader(whole, pki_dir, tmp_path):
    addr, proc = ipam_service(whole, pki_dir, tmp_path)
    client = rpc.Client("IPAM service", addr, ipam_pb2_grpc.IpamServiceStub, 20)
    calls, stop = [], threading.Event()

    def allocate():
        n = 0
        while not stop.is_set():
            handle = f"h/{n}"
            n += 1
            started = time.monotonic()
            try:
                client.call("AutoAssign", ipam_pb2.AutoAssignRequest(
                    num_ipv4=1, handle_id=handle, hostname="h"))
                calls.append((started, handle, None))
            except Exception as exc:
                calls.append((started, handle, exc))
    try:
        client.call("CreatePool", ipam_pb2.CreatePoolRequest(
            pool=ipam_pb2.Pool(cidr="10.60.0.0/16")))
        thread = threading.Thread(target=allocate)
        thread.start()
        try:
            wait_for("allocations", lambda: len(calls) >= 5)
            # The leader dies with the service's transactions on it (the
            # service talks to one member; that one is made the leader).
            [used] = members_used_by(whole, proc.pid)
            whole.move_leader(used)
            killed = time.monotonic()
            whole.kill(used)                     # mid-allocation: they run back to back
            wait_for("allocations after the kill",
                     lambda: sum(1 for c in calls if c[0] > killed) >= 5)
        finally:
            stop.set()
            thread.join()
        failed = [(h, str(e)) for _, h, e in calls if e is not None]
        assert failed == [], failed           # not even the one in flight at the kill
        # Each allocation happened exactly once, although etcd may have lost
        # the answer to the transaction that was in flight.
        for _, handle, _ in calls:
            held = client.call("ListHandleAllocations",
                               ipam_pb2.ListHandleAllocationsRequest(handle_id=handle))
            assert len(held.allocations) == 1, handle
        result = calicoctl("ipam", "check", env={"CALICO_IPAM_ADDR": addr,
                                                 "ETCD_ENDPOINTS": whole.endpoints})
        assert result.returncode == 0 and "no problems found" in result.stdout, result
    finally:
        client.close()
        launch.stop_pid(proc.pid)


def test_a_member_down_at_start(whole, pki_dir, tmp_path):
    down = whole.members[0]
    whole.kill(down)
    # A client whose first call goes to the dead member moves on to another.
    store = EtcdStore(config.parse_endpoints(whole.endpoints),
                      tls=identity_files(pki_dir, "admin"))
    try:
        store._live._current_endpoint_label = f"127.0.0.1:{down.client_port}"
        assert store.get("/calico/v1/nothing") is None
    finally:
        store.close()
    # A service started now serves, and calicoctl through it.
    addr, proc = ipam_service(whole, pki_dir, tmp_path)
    try:
        env = {"CALICO_IPAM_ADDR": addr, "ETCD_ENDPOINTS": whole.endpoints}
        added = calicoctl("pool", "add", "10.61.0.0/16", env=env)
        assert added.returncode == 0, added.stderr
        whole.restart(down)
        assert "10.61.0.0/16" in calicoctl("pool", "show", env=env).stdout
    finally:
        launch.stop_pid(proc.pid)
