"""One invocation end to end, in memory: what lands on stdout and the exit code."""

import io
import json

import pytest

from cni import skel, spec
from cni.rpc import RpcFailure
from cni.spec import CniError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
CONF = {"cniVersion": "1.0.0", "name": "net", "type": "fake"}
RESULT = {"interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
          "ips": [{"address": "10.0.0.5/32", "interface": 0}]}


class FakePlugin:
    """Records calls; answers ADD with RESULT or raises what it is told."""

    def __init__(self, raises=None):
        self.calls, self.raises = [], raises

    def _do(self, name, env, conf, version, result=None):
        self.calls.append((name, env.command, version))
        if self.raises:
            raise self.raises
        return result

    def add(self, env, conf, version):
        return self._do("add", env, conf, version, RESULT)

    def delete(self, env, conf, version):
        return self._do("delete", env, conf, version)

    def check(self, env, conf, version):
        return self._do("check", env, conf, version)

    def gc(self, env, conf, version):
        return self._do("gc", env, conf, version)

    def status(self, env, conf, version):
        return self._do("status", env, conf, version)


def run(plugin, environ=ENV, conf=CONF):
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    out = io.StringIO()
    code = skel.run(plugin, environ=environ, stdin=io.BytesIO(data), stdout=out)
    text = out.getvalue()
    return code, (json.loads(text) if text else None)


def test_add_prints_the_result_in_the_requested_version():
    plugin = FakePlugin()
    assert run(plugin) == (0, {"cniVersion": "1.0.0", **RESULT, "dns": {}})
    code, out = run(plugin, conf=dict(CONF, cniVersion="0.4.0"))
    assert code == 0 and out["ips"][0]["version"] == "4"
    assert plugin.calls == [("add", "ADD", "1.0.0"), ("add", "ADD", "0.4.0")]


def test_del_prints_nothing():
    assert run(FakePlugin(), environ=dict(ENV, CNI_COMMAND="DEL")) == (0, None)


def test_version_needs_only_the_command():
    code, out = run(FakePlugin(), environ={"CNI_COMMAND": "VERSION"},
                    conf={"cniVersion": "0.4.0"})
    assert (code, out["cniVersion"]) == (0, "0.4.0")
    assert out["supportedVersions"] == list(spec.SUPPORTED_VERSIONS)
    assert run(FakePlugin(), environ={"CNI_COMMAND": "VERSION"}, conf=b"")[1]["cniVersion"] == \
        spec.LATEST


@pytest.mark.parametrize("environ, conf, code", [
    (ENV, b"{", 6),
    (ENV, dict(CONF, cniVersion="0.2.0"), 1),
    ({k: v for k, v in ENV.items() if k != "CNI_IFNAME"}, CONF, 4),
    (dict(ENV, CNI_COMMAND="CHECK"), dict(CONF, cniVersion="0.3.1"), 1),
    (ENV, {"cniVersion": "1.0.0", "type": "fake"}, 7),
])
def test_errors_are_the_spec_object_and_the_plugin_is_not_called(environ, conf, code):
    plugin = FakePlugin()
    exit_code, out = run(plugin, environ, conf)
    assert exit_code == 1 and out["code"] == code and out["msg"]
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert plugin.calls == []


def test_error_speaks_the_configuration_version():
    code, out = run(FakePlugin(raises=CniError(102, "Full.")), conf=dict(CONF, cniVersion="0.4.0"))
    assert (code, out) == (1, {"cniVersion": "0.4.0", "code": 102, "msg": "Full."})


def test_an_unexpected_exception_is_error_100_not_a_traceback():
    code, out = run(FakePlugin(raises=KeyError("ips")))
    assert code == 1 and out["code"] == 100 and out["details"] == "KeyError"


@pytest.mark.parametrize("status, code", [
    ("UNAVAILABLE", 11), ("DEADLINE_EXCEEDED", 11), ("ABORTED", 11), ("INVALID_ARGUMENT", 7),
    ("FAILED_PRECONDITION", 101), ("NOT_FOUND", 101), ("RESOURCE_EXHAUSTED", 102),
    ("ALREADY_EXISTS", 103), ("INTERNAL", 100), ("UNKNOWN", 100),
])
def test_grpc_status_to_cni_code(status, code):
    err = RpcFailure(status, "IP address 10.0.0.5 is already assigned.", "endpoint service",
                     "unix:/x.sock").to_cni()
    assert err.code == code
    assert "endpoint service at unix:/x.sock" in err.msg + err.details


def test_unreachable_service_message_and_status_override():
    failure = RpcFailure("UNAVAILABLE", "failed to connect to all addresses", "IPAM service",
                         "unix:/nope.sock")
    assert failure.unreachable
    err = failure.to_cni(spec.NOT_AVAILABLE)
    assert (err.code, err.msg) == (50, "The IPAM service at unix:/nope.sock cannot be reached.")
    # etcd unreachable behind a reachable service: the service's own message.
    etcd = RpcFailure("UNAVAILABLE", "Error accessing etcd (127.0.0.1:2379).", "endpoint service",
                      "unix:/x.sock").to_cni()
    assert etcd.msg == "Error accessing etcd (127.0.0.1:2379)."
