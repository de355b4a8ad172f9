"""Configuration keys of the calico and calico-ipam plugins, and their defaults."""

import pytest

from cni import config, spec
from cni.spec import CniError, Env

ENV = Env("ADD", "abc", "/var/run/netns/x", "eth0")


def calico(**keys):
    return {"cniVersion": "1.0.0", "name": "my-net.1", "type": "calico", **keys}


def error(fn, *args):
    with pytest.raises(CniError) as info:
        fn(*args)
    return info.value


def test_calico_defaults(monkeypatch):
    for var in ("CALICO_NODENAME", "NODENAME", "CALICO_ENDPOINT_ADDR", "CALICO_STATE_DIR",
                "CALICO_IPAM_ADDR", "CALICO_POLICY_ADDR", "CALICO_RPC_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CALICO_NODENAME", "node7")
    cfg = config.calico(calico(), ENV)
    s = cfg.services
    assert (s.nodename, s.endpoint_addr) == ("node7", "unix:/var/run/calico-py/node7/endpoint.sock")
    assert s.endpoint_json == "/var/run/calico-py/node7/endpoint.json.sock"
    assert cfg.mtu == 0
    assert (s.ipam_addr, s.policy_addr, s.timeout) == ("127.0.0.1:50051", "127.0.0.1:50052", 10.0)
    assert cfg.profiles == ["my_net_1"]
    a = cfg.assign
    assert (a.ipv4, a.ipv6, a.ipv4_pools, a.ipv6_pools, a.ips) == (True, False, [], [], [])


def test_calico_keys():
    cfg = config.calico(calico(
        nodename="h1", state_dir="/tmp/state", ipam_addr="unix:/tmp/ipam.sock",
        policy_addr="10.0.0.1:5000", timeout=2.5, profiles=["WEB", "DB"], mtu=9000,
        dns={"nameservers": ["10.0.0.10"]},
        ipam={"type": "calico-ipam", "assign_ipv4": "false", "assign_ipv6": True,
              "ipv6_pools": ["fd80::/64"], "ipv4_pools": ["10.20.0.0/16"]}), ENV)
    s = cfg.services
    assert (s.nodename, s.endpoint_addr, s.ipam_addr, s.policy_addr, s.timeout) == \
        ("h1", "unix:/tmp/state/h1/endpoint.sock", "unix:/tmp/ipam.sock", "10.0.0.1:5000", 2.5)
    assert s.endpoint_json == "/tmp/state/h1/endpoint.json.sock" and cfg.mtu == 9000
    assert cfg.profiles == ["WEB", "DB"] and cfg.dns == {"nameservers": ["10.0.0.10"]}
    assert (cfg.assign.ipv4, cfg.assign.ipv6) == (False, True)
    assert cfg.assign.ipv6_pools == ["fd80::/64"]
    explicit = config.calico(calico(endpoint_addr="unix:/x/ep.sock", state_dir="/ignored"), ENV)
    assert explicit.services.endpoint_addr == "unix:/x/ep.sock"
    assert explicit.services.endpoint_json == "/x/ep.json.sock"


def test_specific_addresses_from_runtime_config_or_cni_args():
    conf = calico(runtimeConfig={"ips": ["10.20.0.5/32", "fd80::5"]})
    assert config.calico(conf, ENV).assign.ips == ["10.20.0.5", "fd80::5"]
    env = Env("ADD", "abc", "/x", "eth0", args={"IP": "10.20.0.6,10.20.0.7"})
    assert config.calico(calico(), env).assign.ips == ["10.20.0.6", "10.20.0.7"]
    bad_env = Env("ADD", "abc", "/x", "eth0", args={"IP": "10.20.0.300"})
    assert error(config.calico, calico(), bad_env).code == spec.INVALID_ENVIRONMENT
    assert error(config.calico, calico(runtimeConfig={"ips": ["nope"]}), ENV).code == 7


@pytest.mark.parametrize("keys, code, word", [
    ({"mtu": 67}, spec.INVALID_CONFIG, "Invalid mtu 67: give a number from 68 to 65535"),
    ({"mtu": 65536}, spec.INVALID_CONFIG, "Invalid mtu 65536"),
    ({"mtu": "1500"}, spec.INVALID_CONFIG, "mtu"),
    ({"mtu": True}, spec.INVALID_CONFIG, "mtu"),
    ({"endpoint_addr": "127.0.0.1:5000"}, 7, "give the endpoint service's unix socket"),
    ({"ipam": {"type": "host-local"}}, spec.INVALID_CONFIG, "\"host-local\" cannot be used"),
    ({"ipam": {"type": "calico-ipam", "assign_ipv4": "yes"}}, 7, "assign_ipv4"),
    ({"ipam": {"type": "calico-ipam", "ipv4_pools": ["fd80::/64"]}}, 7, "not an IPv4 CIDR"),
    ({"ipam": {"type": "calico-ipam", "ipv6_pools": "fd80::/64"}}, 7, "list of pool CIDRs"),
    ({"ipam": {"type": "calico-ipam", "assign_ipv4": False}}, 7, "no address"),
    ({"profiles": "WEB"}, 7, "profiles"),
    ({"profiles": [""]}, 7, "profiles"),
    ({"timeout": 0}, 7, "timeout"),
    ({"timeout": "10"}, 7, "timeout"),
    ({"nodename": ""}, 7, "nodename"),
    ({"nodename": "bad name"}, 7, "Invalid nodename \"bad name\": use 1-253"),
    ({"ipam_addr": "nowhere"}, 7, "Invalid ipam_addr \"nowhere\""),
    ({"state_dir": "relative"}, 7, "Invalid state_dir"),
])
def test_bad_keys_name_the_key(keys, code, word):
    err = error(config.calico, calico(**keys), ENV)
    assert err.code == code and word in err.msg, err.msg


def test_a_bad_environment_default_is_error_4(monkeypatch):
    monkeypatch.setenv("CALICO_RPC_TIMEOUT", "soon")
    err = error(config.calico, calico(nodename="h1"), ENV)
    assert err.code == spec.INVALID_ENVIRONMENT and "CALICO_RPC_TIMEOUT" in err.msg


def test_calico_ipam_reads_its_section_then_the_plugin():
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "ptp", "nodename": "outer",
            "ipam": {"type": "calico-ipam", "ipam_addr": "unix:/tmp/ipam.sock",
                     "assign_ipv6": "true", "routes": [{"dst": "0.0.0.0/0"}]}}
    cfg = config.calico_ipam(conf, ENV)
    assert (cfg.services.nodename, cfg.services.ipam_addr) == ("outer", "unix:/tmp/ipam.sock")
    assert (cfg.assign.ipv4, cfg.assign.ipv6, cfg.routes) == (True, True, [{"dst": "0.0.0.0/0"}])
    conf["ipam"]["nodename"] = "inner"
    assert config.calico_ipam(conf, ENV).services.nodename == "inner"
    assert error(config.calico_ipam, {"name": "net", "type": "ptp"}, ENV).code == 7
    conf["ipam"]["routes"] = [{"dst": "nowhere"}]
    assert "routes" in error(config.calico_ipam, conf, ENV).msg


def test_del_needs_the_endpoint_service_on_a_unix_socket():
    conf = calico(nodename="h1", endpoint_addr="127.0.0.1:5000", mtu=70000)
    assert error(config.calico_services, conf).code == spec.INVALID_CONFIG
    assert config.calico_services(dict(conf, endpoint_addr="unix:/x/ep.sock")).endpoint_json == \
        "/x/ep.json.sock"
