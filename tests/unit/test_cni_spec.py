"""The CNI specification rules: environment, versions, results, error objects."""

import pytest

from cni import spec
from cni.spec import CniError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}


def code_of(fn, *args):
    with pytest.raises(CniError) as info:
        fn(*args)
    return info.value.code, info.value.msg


def test_environment_of_an_add():
    env = spec.read_env(dict(ENV, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5"))
    assert (env.command, env.container_id, env.netns, env.ifname) == \
        ("ADD", "abc123", "/var/run/netns/x", "eth0")
    assert env.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert env.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web", "IP": "10.0.0.5"}


@pytest.mark.parametrize("change, word", [
    ({"CNI_COMMAND": None}, "CNI_COMMAND is missing"),
    ({"CNI_COMMAND": "ATTACH"}, "CNI_COMMAND is 'ATTACH'"),
    ({"CNI_CONTAINERID": None}, "CNI_CONTAINERID is not set"),
    ({"CNI_CONTAINERID": "-abc"}, "Invalid CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "a b"}, "Invalid CNI_CONTAINERID"),
    ({"CNI_NETNS": None}, "CNI_NETNS is not set"),
    ({"CNI_NETNS": "relative/path"}, "Invalid CNI_NETNS"),
    ({"CNI_IFNAME": None}, "CNI_IFNAME is not set"),
    ({"CNI_IFNAME": "averyveryverylongname"}, "Invalid CNI_IFNAME"),
    ({"CNI_IFNAME": "eth:0"}, "Invalid CNI_IFNAME"),
    ({"CNI_IFNAME": ".."}, "Invalid CNI_IFNAME"),
    ({"CNI_PATH": None}, "CNI_PATH is not set"),
    ({"CNI_ARGS": "novalue;K=V"}, "Invalid CNI_ARGS"),
])
def test_bad_environment_is_error_4(change, word):
    environ = {k: v for k, v in {**ENV, **change}.items() if v is not None}
    code, msg = code_of(spec.read_env, environ)
    assert code == spec.INVALID_ENVIRONMENT and word in msg


def test_del_needs_no_namespace_and_gc_needs_only_the_command():
    environ = {k: v for k, v in dict(ENV, CNI_COMMAND="DEL").items() if k != "CNI_NETNS"}
    assert spec.read_env(environ).netns == ""
    assert spec.read_env({"CNI_COMMAND": "GC"}).command == "GC"
    assert spec.read_env({"CNI_COMMAND": "STATUS"}).container_id == ""


@pytest.mark.parametrize("data, code", [
    (b"{not json", spec.DECODING_FAILURE), (b"", spec.DECODING_FAILURE),
    (b"[1]", spec.DECODING_FAILURE), (b"\xff\xfe", spec.DECODING_FAILURE),
])
def test_undecodable_configuration_is_error_6(data, code):
    assert code_of(spec.decode_config, data)[0] == code


def test_version_negotiation():
    for version in spec.SUPPORTED_VERSIONS:
        assert spec.negotiate({"cniVersion": version}, "ADD") == version
    assert code_of(spec.negotiate, {"cniVersion": "9.9.9"}, "ADD") == \
        (1, "The network configuration is version 9.9.9; this plugin supports 0.3.0, 0.3.1, "
            "0.4.0, 1.0.0, 1.1.0.")
    assert "no cniVersion (meaning 0.1.0)" in code_of(spec.negotiate, {}, "ADD")[1]
    assert code_of(spec.negotiate, {"cniVersion": "0.2.0"}, "ADD")[0] == 1
    assert code_of(spec.negotiate, {"cniVersion": "one"}, "ADD")[0] == 1
    assert code_of(spec.negotiate, {"cniVersion": 1}, "ADD")[0] == 1
    # Commands newer than the configuration's version.
    assert code_of(spec.negotiate, {"cniVersion": "0.3.1"}, "CHECK")[0] == 1
    assert spec.negotiate({"cniVersion": "0.4.0"}, "CHECK") == "0.4.0"
    for command in ("GC", "STATUS"):
        assert "needs cniVersion 1.1.0" in code_of(spec.negotiate, {"cniVersion": "1.0.0"},
                                                   command)[1]
        assert spec.negotiate({"cniVersion": "1.1.0"}, command) == "1.1.0"


def test_version_info_echoes_a_supported_request():
    assert spec.version_info("1.0.0") == {"cniVersion": "1.0.0", "supportedVersions": [
        "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    assert spec.version_info("")["cniVersion"] == spec.LATEST
    assert spec.version_info("7.0.0")["cniVersion"] == spec.LATEST


@pytest.mark.parametrize("conf, word", [
    ({"type": "calico"}, "network name"),
    ({"name": "-x", "type": "calico"}, "network name"),
    ({"name": "net"}, "'type'"),
    ({"name": "net", "type": "calico", "ipam": []}, "'ipam' must be a JSON object"),
    ({"name": "net", "type": "calico", "prevResult": "x"}, "'prevResult'"),
])
def test_common_fields(conf, word):
    code, msg = code_of(spec.validate_common, conf)
    assert code == spec.INVALID_CONFIG and word in msg


def test_error_object():
    err = CniError(102, "No address left.", "RESOURCE_EXHAUSTED from the endpoint service")
    assert err.to_json("1.0.0") == {"cniVersion": "1.0.0", "code": 102,
                                    "msg": "No address left.",
                                    "details": "RESOURCE_EXHAUSTED from the endpoint service"}
    assert CniError(7, "bad").to_json("0.4.0") == {"cniVersion": "0.4.0", "code": 7,
                                                   "msg": "bad"}


RESULT = {"interfaces": [{"name": "cali123"}, {"name": "eth0", "mac": "02:00:00:00:00:01",
                                               "sandbox": "/var/run/netns/x"}],
          "ips": [{"address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1},
                  {"address": "fd00::5/128", "gateway": "fe80::1", "interface": 1}],
          "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]}


def test_result_per_version():
    v1 = spec.format_result(RESULT, "1.1.0")
    assert v1 == {"cniVersion": "1.1.0", **RESULT, "dns": {}}
    old = spec.format_result(RESULT, "0.3.1")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert old["interfaces"] == RESULT["interfaces"] and old["cniVersion"] == "0.3.1"
    ipam_only = spec.format_result({"ips": [{"address": "10.0.0.5/16"}], "routes": []}, "1.0.0")
    assert ipam_only == {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/16"}], "dns": {}}


def test_prev_result_is_merged_before_ours():
    prev = {"cniVersion": "0.4.0", "interfaces": [{"name": "lo", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["10.0.0.10"]}}
    merged = spec.merge(prev, RESULT)
    assert [i["name"] for i in merged["interfaces"]] == ["lo", "cali123", "eth0"]
    assert [ip.get("interface") for ip in merged["ips"]] == [0, 2, 2]
    assert "version" not in merged["ips"][0]
    assert merged["dns"] == {"nameservers": ["10.0.0.10"]}
    assert spec.merge(None, RESULT) is RESULT


def test_valid_attachments():
    conf = {"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"},
                                          {"containerID": "b", "ifname": "net1"}]}
    assert spec.valid_attachments(conf) == {("a", "eth0"), ("b", "net1")}
    assert spec.valid_attachments({"cni.dev/valid-attachments": []}) == set()
    assert code_of(spec.valid_attachments, {})[0] == spec.INVALID_CONFIG
    assert code_of(spec.valid_attachments,
                   {"cni.dev/valid-attachments": [{"containerID": "a"}]})[0] == 7


# CHECK's reading of `ip -json` (iproute2 6.1's shapes) -------------------------------------

LINK = {"ifindex": 2, "link_index": 9, "ifname": "eth0",
        "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"], "mtu": 1500,
        "operstate": "UP", "address": "a2:42:0f:11:22:33",
        "addr_info": [{"family": "inet", "local": "10.20.0.5", "prefixlen": 32, "scope": "global"},
                      {"family": "inet6", "local": "fd80::5", "prefixlen": 128,
                       "scope": "global"},
                      {"family": "inet6", "local": "fe80::a042:fff:fe11:2233", "prefixlen": 64,
                       "scope": "link"}]}
V4 = [{"dst": "default", "gateway": "169.254.1.1", "flags": []},
      {"dst": "169.254.1.1", "scope": "link", "flags": []}]
V6 = [{"dst": "fe80::/64", "protocol": "kernel", "metric": 256, "flags": []},
      {"dst": "default", "gateway": "fe80::ecee:eeff:feee:eeee", "metric": 1024, "flags": []}]
WANT = dict(ifname="eth0", mac="a2:42:0f:11:22:33", nets=["10.20.0.5/32", "fd80::5/128"],
            gw4="169.254.1.1", gw6="fe80::ecee:eeff:feee:eeee")


def test_check_finds_nothing_wrong_with_a_good_interface():
    from cni.netcheck import differences
    assert differences(LINK, V4, V6, **WANT) == []


def test_check_names_each_difference():
    from cni.netcheck import differences
    assert differences(None, [], [], **WANT) == ["interface eth0 is missing"]
    down = dict(LINK, flags=["BROADCAST"], address="02:00:00:00:00:09",
                addr_info=LINK["addr_info"][1:])
    assert differences(down, V4[1:], V6[:1], **WANT) == [
        "interface eth0 is down",
        "interface eth0 has MAC 02:00:00:00:00:09, not a2:42:0f:11:22:33",
        "address 10.20.0.5/32 is missing from eth0",
        "the default route via 169.254.1.1 is missing",
        "the IPv6 default route via fe80::ecee:eeff:feee:eeee is missing"]
    assert differences(LINK, V4[:1], V6, **WANT) == ["the route to 169.254.1.1 on eth0 is missing"]
