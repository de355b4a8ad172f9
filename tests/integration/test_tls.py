"""Mutual TLS and identities on real services, real etcd and real certificates.

Every row of the authorisation table: one call allowed and one refused, per
identity, through the services themselves; bad certificates and plaintext
refused at the handshake; a refused call changes nothing; certificates
rotate without a restart.
"""

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from calico.bgp.v1 import bgp_pb2, bgp_pb2_grpc
from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import pki, rpc
from calicopy.authz import Authorizer
from calicopy.datastore import keys
from calicopy.tls import Security, TlsFiles
from services.endpoint.endpoints import EndpointManager
from services.endpoint.server import create_server as endpoint_server
from services.ipam.allocator import Ipam
from tests.cli import calicoctl
from tests.conftest import ROOT, identity_files
from tests.fakes import FakeDataplane

Code = grpc.StatusCode


@pytest.fixture
def endpoint_addr(store, service_security):
    """Node a's endpoint service on TCP (mutual TLS), over a fake kernel."""
    manager = EndpointManager(store, Ipam(store), FakeDataplane(), "a")
    server, port = endpoint_server("127.0.0.1:0", manager, security=service_security("ep-a"),
                                   authorizer=Authorizer(node="a"))
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()


@pytest.fixture
def as_(pki_dir):
    """as_(identity, service stub class, address): a stub presenting that identity."""
    channels = []

    def make(identity, stub_class, addr):
        channel = rpc.channel(addr, Security(identity_files(pki_dir, identity)))
        channels.append(channel)
        return stub_class(channel)
    yield make
    for channel in channels:
        channel.close()


def code(call):
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return Code.OK, ""


def test_ipam_rows(as_, ipam_server, store):
    admin = as_("admin", ipam_pb2_grpc.IpamServiceStub, ipam_server[0])
    admin.CreatePool(ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.80.0.0/16")),
                     timeout=10)
    a = as_("node:a", ipam_pb2_grpc.IpamServiceStub, ipam_server[0])
    k = as_("scheduler:k", ipam_pb2_grpc.IpamServiceStub, ipam_server[0])
    mine = a.AutoAssign(ipam_pb2.AutoAssignRequest(num_ipv4=1, hostname="a", handle_id="a/w"),
                        timeout=10).ipv4[0]
    theirs = k.AutoAssign(ipam_pb2.AutoAssignRequest(num_ipv4=1, hostname="b", handle_id="b/w"),
                          timeout=10).ipv4[0]
    before = store.list(keys.IPAM)
    for call in (
            lambda: a.CreatePool(ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(
                cidr="10.81.0.0/16")), timeout=10),
            lambda: a.AutoAssign(ipam_pb2.AutoAssignRequest(
                num_ipv4=1, hostname="b", handle_id="b/x"), timeout=10),
            lambda: a.ReleaseByHandle(ipam_pb2.ReleaseByHandleRequest(handle_id="b/w"),
                                      timeout=10),
            lambda: a.ReleaseIPs(ipam_pb2.ReleaseIPsRequest(ips=[theirs]), timeout=10),
            lambda: k.DeletePool(ipam_pb2.DeletePoolRequest(cidr="10.80.0.0/16"), timeout=10)):
        got, details = code(call)
        assert got == Code.PERMISSION_DENIED, details
    assert store.list(keys.IPAM) == before                  # nothing changed
    assert admin.GetAllocation(ipam_pb2.GetAllocationRequest(ip=theirs), timeout=10).allocated
    assert list(a.ReleaseByHandle(ipam_pb2.ReleaseByHandleRequest(handle_id="a/w"),
                                  timeout=10).released) == [mine]
    assert len(a.ListPools(ipam_pb2.ListPoolsRequest(), timeout=10).pools) == 1


def test_policy_and_bgp_rows(as_, policy_server, bgp_server):
    pa = as_("node:a", policy_pb2_grpc.PolicyServiceStub, policy_server[0])
    pk = as_("scheduler:k", policy_pb2_grpc.PolicyServiceStub, policy_server[0])
    assert pa.CreateProfile(policy_pb2.CreateProfileRequest(name="web"), timeout=10).profile
    assert pk.GetProfile(policy_pb2.GetProfileRequest(name="web"), timeout=10).profile.tags
    for call in (lambda: pa.UpdateTags(policy_pb2.UpdateTagsRequest(name="web", add="x"),
                                       timeout=10),
                 lambda: pk.UpdateRules(policy_pb2.UpdateRulesRequest(
                     name="web", rules_json='{"inbound_rules": []}'), timeout=10),
                 lambda: pk.DeleteProfile(policy_pb2.DeleteProfileRequest(name="web"),
                                          timeout=10)):
        assert code(call)[0] == Code.PERMISSION_DENIED
    assert pk.GetProfile(policy_pb2.GetProfileRequest(name="web"), timeout=10).profile.tags \
        == ["web"]

    ba = as_("node:a", bgp_pb2_grpc.BgpServiceStub, bgp_server[0])
    bk = as_("scheduler:k", bgp_pb2_grpc.BgpServiceStub, bgp_server[0])
    assert ba.RegisterNode(bgp_pb2.RegisterNodeRequest(
        node=bgp_pb2.Node(name="a", ipv4="172.31.0.1")), timeout=10).changed
    for call in (lambda: ba.RegisterNode(bgp_pb2.RegisterNodeRequest(
                     node=bgp_pb2.Node(name="b", ipv4="172.31.0.2")), timeout=10),
                 lambda: ba.SetBgpConfig(bgp_pb2.SetBgpConfigRequest(node_mesh=False),
                                         timeout=10),
                 lambda: bk.AddPeer(bgp_pb2.AddPeerRequest(peer=bgp_pb2.Peer(
                     ip="172.31.0.9", as_num=64000)), timeout=10)):
        got, details = code(call)
        assert got == Code.PERMISSION_DENIED, details
    assert [n.node.name for n in bk.ListNodes(bgp_pb2.ListNodesRequest(), timeout=10).nodes] \
        == ["a"]
    assert list(bk.ListPeers(bgp_pb2.ListPeersRequest(), timeout=10).peers) == []


def test_endpoint_service_rows(as_, endpoint_addr):
    for identity, allowed in (("node:a", True), ("scheduler:k", True), ("admin", True),
                              ("node:b", False)):
        stub = as_(identity, endpoint_pb2_grpc.EndpointServiceStub, endpoint_addr)
        got, details = code(lambda: stub.GetNodeInfo(endpoint_pb2.GetNodeInfoRequest(),
                                                     timeout=10))
        assert (got == Code.OK) == allowed, (identity, details)
        if not allowed:
            assert details == ("node:b lacks permission for GetNodeInfo: a node may call "
                               "only its own endpoint service (this is a's).")


def _self_signed(folder, name="admin"):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    pki.save(folder, name, cert, key)
    return pki.paths(folder, name)


def test_bad_certificates_and_plaintext_are_refused_at_the_handshake(ipam_server, pki_dir,
                                                                     tmp_path):
    addr = ipam_server[0]
    ca = pki.paths(pki_dir, pki.CA_NAME)[0]
    ca_cert, ca_key = pki.load_ca(pki_dir)
    expired = tmp_path / "expired"
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    pki.save(expired, "admin", *pki.issue(ca_cert, ca_key, "admin", days=2, not_before=past))
    other = tmp_path / "other"
    pki.ensure(other, {"admin": []})
    cases = {"expired": TlsFiles(ca, *pki.paths(expired, "admin")),
             "self-signed": TlsFiles(ca, *_self_signed(tmp_path / "self")),
             "other CA": TlsFiles(ca, *pki.paths(other, "admin"))}
    for what, files in cases.items():
        with rpc.channel(addr, Security(files)) as ch:
            got, details = code(lambda: ipam_pb2_grpc.IpamServiceStub(ch).ListPools(
                ipam_pb2.ListPoolsRequest(), timeout=5))
        assert got == Code.UNAVAILABLE, (what, got, details)
    with grpc.insecure_channel(addr) as ch:                   # plaintext
        assert code(lambda: ipam_pb2_grpc.IpamServiceStub(ch).ListPools(
            ipam_pb2.ListPoolsRequest(), timeout=5))[0] == Code.UNAVAILABLE
    assert not rpc.check_health(addr, security=Security(insecure=True))
    assert rpc.check_health(addr)                             # the admin's, from the env
    # calicoctl says what went wrong, in one line.
    result = calicoctl("pool", "show", env={
        "CALICO_IPAM_ADDR": addr, "CALICO_TLS_CERT_FILE": str(cases["other CA"].cert),
        "CALICO_TLS_KEY_FILE": str(cases["other CA"].key), "CALICO_RPC_TIMEOUT": "2"})
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"The TLS handshake with the IPAM service at {addr} "
                                    "failed"), result.stderr


def test_calicoctl_names_the_identity_and_the_permission(ipam_server, pki_dir, store):
    node = identity_files(pki_dir, "node:a")
    result = calicoctl("pool", "add", "10.82.0.0/16", env={
        "CALICO_IPAM_ADDR": ipam_server[0], "CALICO_TLS_CERT_FILE": str(node.cert),
        "CALICO_TLS_KEY_FILE": str(node.key)})
    assert result.returncode == 1
    assert result.stderr == ("node:a lacks permission for CreatePool (pool 10.82.0.0/16): "
                             "pools are the administrator's.\n")
    assert store.list(keys.pools_prefix()) == []


def test_an_identity_calico_py_does_not_know_is_refused(ipam_server, pki_dir, tmp_path):
    ca_cert, ca_key = pki.load_ca(pki_dir)
    cert, key = pki.issue(ca_cert, ca_key, "service:mallory")
    pki.save(tmp_path, "service:mallory", cert, key)
    files = TlsFiles(pki.paths(pki_dir, pki.CA_NAME)[0], *pki.paths(tmp_path, "service:mallory"))
    with rpc.channel(ipam_server[0], Security(files)) as ch:
        got, details = code(lambda: ipam_pb2_grpc.IpamServiceStub(ch).ListPools(
            ipam_pb2.ListPoolsRequest(), timeout=5))
    assert (got, details) == (Code.PERMISSION_DENIED, "service:mallory lacks permission for "
                              "ListPools: it is not an identity calico-py knows.")


def _served_serial(port, files):
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_certificates_rotate_without_a_restart(store, pki_dir, tmp_path):
    """The server's files are replaced: new connections get the new certificate;
    the client's are replaced: its next calls present the new identity."""
    folder = tmp_path / "pki"
    shutil.copytree(pki_dir, folder)
    service = TlsFiles(folder / "ca.pem", *pki.paths(folder, "service:ipam"))
    if not service.cert.exists():
        pki.ensure(folder, {"service:ipam": []})
    from services.ipam.server import create_server
    server, port = create_server("127.0.0.1:0", Ipam(store), security=Security(service))
    server.start()
    try:
        client_files = TlsFiles(folder / "ca.pem", *pki.paths(folder, "admin"))
        pki.ensure(folder, {"admin": []})
        client = rpc.Client("IPAM service", f"127.0.0.1:{port}", ipam_pb2_grpc.IpamServiceStub,
                            5, Security(client_files))
        first = _served_serial(port, client_files)
        ca_cert, ca_key = pki.load_ca(folder)
        pki.save(folder, "service:ipam", *pki.issue(ca_cert, ca_key, "service:ipam"))
        assert _served_serial(port, client_files) != first
        client.call("ListPools", ipam_pb2.ListPoolsRequest())      # admin may
        cert, key = pki.issue(ca_cert, ca_key, "node:a")            # now it is a node
        os.replace(pki.save(tmp_path, "node:a", cert, key)[0], client_files.cert)
        os.replace(pki.paths(tmp_path, "node:a")[1], client_files.key)
        time.sleep(client.RECHECK + 0.5)
        got = code(lambda: client.invoke("CreatePool", ipam_pb2.CreatePoolRequest(
            pool=ipam_pb2.Pool(cidr="10.83.0.0/16"))))
        assert got[0] == Code.PERMISSION_DENIED and got[1].startswith("node:a lacks")
        client.close()
    finally:
        server.stop(None).wait()


def test_a_service_refuses_a_tcp_address_without_tls(tmp_path, etcd):
    env = _without_tls(tmp_path)
    for module, extra in (("services.ipam", []), ("services.endpoint", [
            f"--listen=127.0.0.1:{_free_port()}", "--name=x"])):
        argv = [sys.executable, "-m", module, *extra]
        if module == "services.ipam":
            argv.append(f"--listen=127.0.0.1:{_free_port()}")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                                cwd=ROOT)
        assert result.returncode == 1, (module, result.stderr)
        line = [x for x in result.stderr.splitlines() if "Refusing" in x]
        assert line and "without TLS" in line[0], (module, result.stderr)


def _without_tls(tmp_path) -> dict:
    """Our environment less every gRPC TLS file (etcd keeps its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_TLS_")}
    env["CALICO_PKI_DIR"] = str(tmp_path / "none")
    return env


def test_insecure_is_said_at_every_start(tmp_path, etcd):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.ipam", f"--listen=127.0.0.1:{port}",
                             "--insecure", f"--etcd-endpoints={etcd}"], cwd=ROOT,
                            env=_without_tls(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not rpc.check_health(f"127.0.0.1:{port}", security=Security(insecure=True)):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "PLAINTEXT" in out and "throw-away labs only" in out


def test_unix_sockets_admit_only_root(ipam_server):
    path = ipam_server[1][len("unix:"):]
    assert os.stat(path).st_mode & 0o777 == 0o600
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             f"try:\n  s.connect({path!r}); print('connected')\n"
             "except PermissionError: print('refused')\n")
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             "/usr/bin/python3", "-c", probe], capture_output=True, text=True,
                            timeout=30)
    assert result.stdout.strip() == "refused", result.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
