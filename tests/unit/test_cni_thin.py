"""The calico plugin's process (cni.thin) and the node side that runs its commands.

In memory: an EndpointManager with an in-memory store, the real IPAM domain
and a fake kernel, served by its JSON gateway and CNI server on sockets in a
temporary folder. The same invocations are run the old way (the whole plugin
in this process, through the JSON socket) and forwarded (cni.thin to the CNI
socket): the answers must be the same bytes. The launcher itself is run as a
runtime runs it, for what needs a process: what it imports, and running the
whole plugin when the node cannot take the command.
"""

import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from calicopy import config as cc
from calicopy.node_paths import NodePaths
from cni import config, skel, spec, thin
from cni.calico import CalicoPlugin
from cni.profiles import Confirmed
from services.endpoint import cni_server, json_gateway
from services.endpoint.cni_server import CniServer, NodeSidePlugin
from services.endpoint.endpoints import EndpointManager
from services.endpoint.json_gateway import JsonGateway
from services.ipam.allocator import Ipam
from tests.conftest import ROOT
from tests.fakes import FakeDataplane, MemoryStore


@pytest.fixture(autouse=True)
def caller_is_root(monkeypatch):
    """The test process is the socket's caller: it counts as root whoever runs
    the unit tier (make test-unit runs without root); the refusal tests
    present another uid themselves."""
    monkeypatch.setattr(cni_server, "peer_uid", lambda conn: 0)
    monkeypatch.setattr(json_gateway, "peer_uid", lambda conn: 0)


NETNS = "/proc/self/ns/net"       # a real network namespace: the plugin checks the path
LAUNCHER = str(ROOT / "cni" / "bin" / "calico")


class Node:
    def __init__(self, tmp_path):
        self.store = MemoryStore()
        ipam = Ipam(self.store)
        ipam.create_pool("10.0.0.0/24")
        self.dataplane = FakeDataplane()
        self.dataplane.namespaces[NETNS] = {"lo"}
        self.manager = EndpointManager(self.store, ipam, self.dataplane, "node-1")
        self.grpc_addr = f"unix:{tmp_path}/node-1/endpoint.sock"
        os.makedirs(tmp_path / "node-1", mode=0o700)
        self.gateway = JsonGateway(cc.endpoint_json_socket(self.grpc_addr), self.manager)
        self.cni = CniServer(cc.endpoint_cni_socket(self.grpc_addr), self.gateway)
        self.conf = {"cniVersion": "1.0.0", "name": "net", "type": "calico",
                     "endpoint_addr": self.grpc_addr, "policy_addr": "127.0.0.1:9"}

    def confirm(self, *profiles):
        marks = Confirmed(config.calico_services(self.conf))
        for name in profiles:
            marks.remember(name)


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path)
    n.gateway.start()
    n.cni.start()
    try:
        yield n
    finally:
        n.cni.stop(grace=1)
        n.gateway.stop(grace=1)


def environ(command, container_id="c1", netns=NETNS, **more):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", **more}
    return {k: v for k, v in env.items() if v}


def in_process(env: dict, conf) -> tuple[int, bytes]:
    """The whole plugin in this process (what cni.calico.main does)."""
    out = io.StringIO()
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    code = skel.run(CalicoPlugin(), environ=env, stdin=io.BytesIO(data), stdout=out)
    return code, out.getvalue().encode()


def forwarded(env: dict, conf, hostname=socket.gethostname()) -> tuple[int, bytes]:
    """cni.thin's answer, over the CNI socket."""
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    return thin.answer({k.encode(): v.encode() for k, v in env.items()}, hostname, data)


# The node runs the plugin's own code: same answers ----------------------------------------

def test_add_check_gc_del_give_what_the_plugin_gives(node):
    node.confirm("net")
    code, out = forwarded(environ("ADD"), node.conf)
    assert code == 0, out
    result = json.loads(out)
    (ep,) = node.manager.list()
    assert result["ips"] == [{"address": ep.ipv4_nets[0], "gateway": "169.254.1.1",
                              "interface": 1}]
    assert ep.workload_id == "c1" and ep.labels["cni.network"] == "net"
    # A retried ADD, in this process, gets the same bytes.
    assert in_process(environ("ADD"), node.conf) == (code, out)

    # CHECK: a result that says another address fails the same way in both.
    wrong = json.loads(out)
    wrong["ips"][0]["address"] = "10.0.0.99/32"
    check = dict(node.conf, prevResult=wrong)
    failed = forwarded(environ("CHECK"), check)
    assert failed == in_process(environ("CHECK"), check)
    assert failed[0] == 1 and json.loads(failed[1])["code"] == spec.CHECK_FAILED

    # GC keeps what is listed; then DEL, twice, and of an unknown container.
    gc = dict(node.conf, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": "c1", "ifname": "eth0"}]})
    assert forwarded({"CNI_COMMAND": "GC"}, gc) == (0, b"")
    assert len(node.manager.list()) == 1
    for _ in range(2):
        assert forwarded(environ("DEL"), node.conf) == (0, b"")
    assert node.manager.list() == [] and not node.dataplane.interfaces
    assert forwarded(environ("DEL", "never", ""), node.conf) == (0, b"")


@pytest.mark.parametrize("env, conf", [
    (environ("ADD"), b"{not json"),
    (environ("ADD"), {"cniVersion": "9.9.9", "name": "net", "type": "calico"}),
    (environ("ADD", netns="/etc/hostname"), None),
    (environ("ADD", netns="/var/run/netns/nosuchns"), None),
    (environ("ADD", container_id=""), None),
    (environ("BOGUS"), None),
    (environ("CHECK", "unknown"), None),
    (environ("ADD"), {"mtu": 70000}),
    (environ("ADD"), {"cniVersion": "0.3.1"}),
    (environ("CHECK"), {"cniVersion": "0.3.1"}),
    (environ("VERSION"), {"cniVersion": "0.4.0"}),
    (environ("VERSION"), b""),
    (environ("VERSION"), b" [1] "),
])
def test_errors_and_versions_are_the_plugins(node, env, conf):
    node.confirm("net")
    if conf is None or isinstance(conf, dict):
        conf = dict(node.conf, **(conf or {}))
    here = in_process(env, conf)
    try:
        there = forwarded(env, conf)
    except thin.RunHere:        # the launcher runs the plugin itself: the same answer
        there = here
    assert there == here


def test_the_plugin_process_environment_and_host_name_are_used(node, tmp_path):
    """No endpoint_addr: the node resolves the plugin process's variables and
    host name, not its own."""
    node.confirm("net")
    conf = {k: v for k, v in node.conf.items() if k != "endpoint_addr"}
    env = environ("ADD", CALICO_STATE_DIR=str(tmp_path))
    code, out = forwarded(env, conf, hostname="node-1")
    assert code == 0, out
    assert [ep.workload_id for ep in node.manager.list()] == ["c1"]
    # Another host's plugin process names another node: handed back.
    with pytest.raises(thin.RunHere):
        forwarded(env, conf, hostname="node-2")


def test_what_only_the_plugin_process_can_do_is_handed_back(node):
    # A profile this node has not seen confirmed: created over gRPC by the plugin.
    with pytest.raises(thin.RunHere):
        forwarded(environ("ADD"), node.conf)
    assert node.manager.list() == []
    # The node answers for its own endpoint service only.
    node.confirm("net")
    plugin = NodeSidePlugin(node.gateway)
    other = config.calico_services(dict(node.conf, endpoint_addr="unix:/x/endpoint.sock"))
    with pytest.raises(skel.HandBack):
        plugin._endpoints(other)
    # STATUS asks other services; the client never forwards it, the node refuses it too.
    status = environ("STATUS")
    assert node.cni.invoke(status, "h", json.dumps(dict(node.conf, cniVersion="1.1.0"))
                           .encode()) is None


def test_a_deadline_missed_is_the_plugins_deadline_error(node, monkeypatch):
    """A call that took longer than the plugin's timeout is answered as its
    socket would have: the work is done (or undone), the answer is late."""
    node.confirm("net")
    clock = [1000.0]
    monkeypatch.setattr(cni_server.LocalEndpoints, "clock", staticmethod(lambda: clock[0]))
    real = node.gateway.call

    def slow(path, body, timeout=None):
        clock[0] += 0.3
        return real(path, body, timeout)
    node.gateway.call = slow
    code, out = forwarded(environ("DEL"), dict(node.conf, timeout=0.2))
    err = json.loads(out)
    assert (code, err["code"]) == (1, spec.TRY_AGAIN_LATER)
    assert err["msg"] == f"The endpoint service at unix:{node.gateway.path} did not answer " \
        "in time."
    assert forwarded(environ("DEL"), dict(node.conf, timeout=0.5)) == (0, b"")


# The socket ---------------------------------------------------------------------------------

def test_socket_is_root_only_and_named_after_the_grpc_one(node):
    assert node.cni.path == node.grpc_addr[len("unix:"):].replace(".sock", ".cni.sock")
    assert stat.S_IMODE(os.stat(node.cni.path).st_mode) == 0o600


def test_a_caller_that_is_not_root_is_refused_and_nothing_runs(node, monkeypatch):
    node.confirm("net")
    monkeypatch.setattr(cni_server, "peer_uid", lambda conn: 65534)
    code, out = forwarded(environ("ADD"), node.conf)
    assert (code, json.loads(out)) == (1, {
        "cniVersion": "1.0.0", "code": spec.INTERNAL,
        "msg": "Only root may call the endpoint service; this process runs as uid 65534.",
        "details": f"PERMISSION_DENIED from the endpoint service at unix:{node.gateway.path}"})
    assert node.manager.list() == []


def test_no_complete_answer_means_running_the_plugin_here(tmp_path):
    path = str(tmp_path / "x.cni.sock")
    with pytest.raises(thin.RunHere):                   # nobody there
        thin.exchange(path, b"x", 1.0)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)

        def answered(answer: bytes):
            def serve():
                conn, _ = server.accept()
                with conn:
                    conn.recv(100)
                    conn.sendall(answer)
            worker = threading.Thread(target=serve)
            worker.start()
            try:
                return thin.exchange(path, b"x", 5.0)
            finally:
                worker.join()

        assert answered(b"1:0,3:abc,") == (0, b"abc")
        for cut_or_handed_back in (b"", b"1:0,5:ab", b"9:hand-back,0:,", b"1:x,0:,"):
            with pytest.raises(thin.RunHere):
                answered(cut_or_handed_back)


# Where the client looks, and what it decodes ----------------------------------------------

@pytest.mark.parametrize("conf, env, hostname", [
    ({}, {}, "h1"),
    ({"nodename": " n2 "}, {"CALICO_NODENAME": "n3"}, "h1"),
    ({}, {"CALICO_NODENAME": "n3", "NODENAME": "n4"}, "h1"),
    ({}, {"NODENAME": "n4", "CALICO_STATE_DIR": "/srv/state/"}, "h1"),
    ({"state_dir": "/tmp/s"}, {"CALICO_ENDPOINT_ADDR": "unix:/elsewhere/ep.sock"}, "h1"),
    ({}, {"CALICO_ENDPOINT_ADDR": "unix:///run/ep.sock"}, "h1"),
    ({"endpoint_addr": "unix:/a/b/endpoint.sock", "nodename": "x"}, {}, "h1"),
    ({"state_dir": "/"}, {}, "h1"),
])
def test_the_socket_is_where_the_plugin_would_call(conf, env, hostname):
    full = dict(conf, cniVersion="1.0.0", name="n", type="calico")
    plugin_env = spec.Env("DEL", environ=env, hostname=hostname)
    services = config.calico_services(full, plugin_env)
    expected = cc.endpoint_cni_socket(services.endpoint_addr)
    got = thin.socket_path(conf, {k.encode(): v.encode() for k, v in env.items()}, hostname)
    assert got == expected


@pytest.mark.parametrize("conf", [
    {"endpoint_addr": "10.0.0.1:5000"}, {"nodename": 7}, {"state_dir": "relative"},
    {"endpoint_addr": " "},
])
def test_keys_the_plugin_would_refuse_make_it_run_here(conf):
    with pytest.raises(thin.RunHere):
        thin.socket_path(conf, {}, "h")


def test_what_the_client_repeats_of_calicopy_and_cni_is_the_same():
    assert thin.STATE_DIR == cc.STATE_DIR.default
    assert NodePaths("/s", "n").endpoint_socket.name == thin.ENDPOINT_SOCKET
    assert cc.endpoint_cni_socket("unix:/s/n/endpoint.sock") == "/s/n/endpoint" + thin.CNI_SUFFIX
    assert thin.SUPPORTED_VERSIONS == spec.SUPPORTED_VERSIONS
    assert thin.PROTOCOL == cni_server.PROTOCOL and thin.HAND_BACK == cni_server.HAND_BACK


@pytest.mark.parametrize("data", [b'{"a": [1, 2.5, "x\\u00e9", null, true]}', b"  []\n",
                                  b'"s"', b"-0", b'{"n": NaN}'])
def test_decode_is_json_loads(data):
    assert repr(thin.decode(data)) == repr(json.loads(data))


@pytest.mark.parametrize("data", [b"{", b"{} x", b"\xff", b"\xef\xbb\xbf{}", b""])
def test_what_is_not_json_is_for_the_plugin_to_say(data):
    with pytest.raises(thin.RunHere):
        thin.decode(data)


def test_request_and_answer_framing():
    env = {b"A": b"1", b"CNI_ARGS": b"K=V;X=Y"}
    data = thin.request(env, "h\u00e9", b'{"x": 1}')
    fields = thin.netstrings(data, 4)
    assert fields == [b"calico-cni/1", "h\u00e9".encode(), b"A=1\0CNI_ARGS=K=V;X=Y",
                      b'{"x": 1}']
    assert cni_server.parse_environ(fields[2]) == {"A": "1", "CNI_ARGS": "K=V;X=Y"}
    stream = io.BytesIO(data)
    assert [cni_server.read_netstring(stream, 100) for _ in range(4)] == fields
    for bad in (b"x:ab,", b"5:ab,", b"2:abX", b"999:"):
        with pytest.raises(ValueError):
            cni_server.read_netstring(io.BytesIO(bad), 100)


# The process the runtime starts -----------------------------------------------------------

def test_the_client_imports_only_what_is_built_in():
    code = ("import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
            "import cni.thin; print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code, str(ROOT)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["_json", "_socket", "cni", "cni.thin"]


def launch(command: str, conf, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    full.update({"CNI_COMMAND": command, **(env or {})})
    return subprocess.run([LAUNCHER], input=json.dumps(conf).encode(), capture_output=True,
                          env=full, timeout=60)


def test_without_a_node_the_plugin_runs_in_the_process_with_the_same_stdin(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "calico",
            "endpoint_addr": f"unix:{tmp_path}/endpoint.sock"}
    out = launch("DEL", conf, {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
                               "CNI_PATH": "/opt/cni/bin"})
    assert out.returncode == 1
    err = json.loads(out.stdout)
    assert (err["code"], err["msg"]) == (spec.TRY_AGAIN_LATER, f"The endpoint service at "
                                         f"unix:{tmp_path}/endpoint.json.sock cannot be reached.")
    # STATUS is always the plugin's own (here: refused for its version).
    out = launch("STATUS", conf)
    assert json.loads(out.stdout)["msg"] == "STATUS needs cniVersion 1.1.0 or later; the " \
        "configuration is version 1.0.0."
    # VERSION is answered by the client, as the plugin would.
    out = launch("VERSION", {"cniVersion": "0.4.0"})
    assert (out.returncode, json.loads(out.stdout)) == (0, spec.version_info("0.4.0"))
