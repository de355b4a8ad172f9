"""Clients of a service given several addresses (its replicas): they wait for
one that is starting, within the call's deadline, and say which addresses
they tried when none answers."""

import threading

import grpc

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import rpc
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from tests.cli import calicoctl
from tests.conftest import identity_files
from tools import launch


def service_env(pki_dir, name):
    files = identity_files(pki_dir, f"service:{name}")
    return {"CALICO_TLS_CA_FILE": str(files.ca), "CALICO_TLS_CERT_FILE": str(files.cert),
            "CALICO_TLS_KEY_FILE": str(files.key), "ETCD_CA_CERT_FILE": str(files.ca),
            "ETCD_CERT_FILE": str(files.cert), "ETCD_KEY_FILE": str(files.key)}


def test_a_call_waits_for_a_service_that_is_starting(etcd, store, pki_dir, tmp_path):
    addrs = [f"127.0.0.1:{launch.free_port()}" for _ in range(2)]
    client = rpc.Client("IPAM service", addrs, ipam_pb2_grpc.IpamServiceStub, 60)
    states, answers = [], []
    failed = threading.Event()

    def seen(state):
        states.append(state)
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            failed.set()
    client._channel.subscribe(seen)
    call = threading.Thread(target=lambda: answers.append(client.call(
        "CreatePool", ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.62.0.0/16")))))
    call.start()
    proc = None
    try:
        # The call has found nothing listening at either address, and waits.
        assert failed.wait(30), states
        assert call.is_alive()
        proc = launch.start_service("services.ipam", addrs[1], etcd, tmp_path / "ipam.log",
                                    env=service_env(pki_dir, "ipam"))
        call.join(60)
        assert answers and answers[0].pool.cidr == "10.62.0.0/16"
        pools = client.call("ListPools", ipam_pb2.ListPoolsRequest()).pools
        assert [p.cidr for p in pools] == ["10.62.0.0/16"]       # made once
    finally:
        call.join(60)
        client.close()
        if proc is not None:
            launch.stop_pid(proc.pid)


def test_when_no_replica_answers_calicoctl_names_them_all():
    addrs = f"127.0.0.1:{launch.free_port()},127.0.0.1:{launch.free_port()}"
    result = calicoctl("pool", "show", env={"CALICO_IPAM_ADDR": addrs,
                                            "CALICO_RPC_TIMEOUT": "1"})
    assert result.returncode == 1
    assert result.stderr == (f"Could not reach the IPAM service at {addrs} (set "
                             "CALICO_IPAM_ADDR to change it). Is it running? 'make up' "
                             "starts it.\n")


def test_calicoctl_uses_the_replica_that_answers(ipam_addr):
    down = f"127.0.0.1:{launch.free_port()}"
    env = {"CALICO_IPAM_ADDR": f"{down},{ipam_addr}"}
    added = calicoctl("pool", "add", "10.63.0.0/16", env=env)
    assert added.returncode == 0, added.stderr
    assert "10.63.0.0/16" in calicoctl("pool", "show", env=env).stdout


def test_every_replica_s_certificate_is_checked_against_the_first_address_s_host(
        store, service_security):
    """The services' certificates name 127.0.0.1 (and not 127.0.0.2)."""
    servers, addrs = [], []
    try:
        for host in ("127.0.0.1", "127.0.0.2"):
            server, port = create_server(f"{host}:0", Ipam(store),
                                         security=service_security("ipam"))
            server.start()
            servers.append(server)
            addrs.append(f"{host}:{port}")
        with rpc.Client("IPAM service", addrs, ipam_pb2_grpc.IpamServiceStub, 5) as client:
            for _ in range(4):          # round robin: both replicas answer, both checked
                client.call("ListPools", ipam_pb2.ListPoolsRequest())
        wrong = f"{addrs[1]},{addrs[0]}"
        result = calicoctl("pool", "show", env={"CALICO_IPAM_ADDR": wrong,
                                                "CALICO_RPC_TIMEOUT": "2"})
        assert result.returncode == 1
        assert result.stderr.startswith(f"The TLS handshake with the IPAM service at {wrong} "
                                        "failed"), result.stderr
    finally:
        for server in servers:
            server.stop(grace=None).wait()
