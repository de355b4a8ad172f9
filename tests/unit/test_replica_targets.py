"""How a client reaches a service's replicas: the gRPC target and service
config made from their addresses (calicopy.rpc), and `make up`'s defaults."""

import json
import re
from pathlib import Path

import pytest

from calicopy import config, errors, rpc
from tools import launch, stack

PROTOS = Path(__file__).resolve().parents[2] / "protos"


@pytest.mark.parametrize("addrs, target", [
    (["10.0.0.10:50051"], "10.0.0.10:50051"),                   # one: as it always was
    (["ipam:50051"], "ipam:50051"),
    ("10.0.0.10:50051,10.0.0.11:50061", "ipv4:10.0.0.10:50051,10.0.0.11:50061"),
    (["[fd00::1]:5", "[fd00::2]:5"], "ipv6:[fd00::1]:5,[fd00::2]:5"),
    (["10.0.0.1:5", "[fd00::2]:5"], "ipv6:[::ffff:10.0.0.1]:5,[fd00::2]:5"),
    (["unix:/run/a.sock", "unix:/run/b.sock"], "unix:/run/a.sock,/run/b.sock"),
])
def test_replicas_make_one_target(addrs, target):
    assert rpc.grpc_target(addrs) == target


def test_names_are_resolved_and_a_name_that_does_not_resolve_is_left_out():
    target = rpc.grpc_target(["localhost:7", "no-such-host.invalid:7"])
    assert re.fullmatch(r"ipv[46]:(127\.0\.0\.1|\[::1\]|\[::ffff:127\.0\.0\.1\]):7"
                        r"(,(127\.0\.0\.1|\[::1\]|\[::ffff:127\.0\.0\.1\]):7)?", target), target


def test_only_calls_safe_to_repeat_are_retried():
    cfg = json.loads(rpc.SERVICE_CONFIG)
    assert cfg["loadBalancingConfig"] == [{"round_robin": {}}]
    [method_config] = cfg["methodConfig"]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    retried = {(n["service"], n["method"]) for n in method_config["name"]}
    rpcs = {}
    for proto in PROTOS.rglob("*.proto"):
        text = proto.read_text()
        package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
        for service, body in re.findall(r"^service (\w+) \{(.*?)^\}", text, re.M | re.S):
            for method in re.findall(r"rpc (\w+)\(", body):
                rpcs[f"{package}.{service}", method] = True
    assert retried <= set(rpcs)                               # every name is a real call
    for never in ("AutoAssign", "AssignIP", "CreatePool", "DeletePool", "ReleaseIPs",
                  "CreateProfile", "DeleteProfile", "AddPeer", "RemoveEndpoint"):
        assert not any(m == never for _, m in retried), never


def test_a_service_s_own_unavailable_is_not_retried():
    """It has retried etcd already; a client retries only a replica that died."""
    class Context:
        metadata = None

        def set_trailing_metadata(self, metadata):
            self.metadata = metadata

        def abort(self, code, details):
            raise RuntimeError(code, details)

    @rpc.maps_errors
    def handler(self, request, context):
        raise errors.Unavailable("Error accessing etcd (x:1). Is etcd running?")
    context = Context()
    with pytest.raises(RuntimeError, match="UNAVAILABLE"):
        handler(None, None, context)
    assert context.metadata == (("grpc-retry-pushback-ms", "-1"),)


def test_make_up_makes_the_second_replica_and_the_members(monkeypatch):
    monkeypatch.setenv("CALICO_IPAM_ADDR", "127.0.0.1:50051")
    monkeypatch.setenv("CALICO_BGP_ADDR", "127.0.0.1:50053,127.0.0.2:50053")
    assert stack.replicas(config.IPAM_ADDR) == ["127.0.0.1:50051", "127.0.0.1:50061"]
    assert stack.replicas(config.BGP_ADDR) == ["127.0.0.1:50053", "127.0.0.2:50053"]
    monkeypatch.setenv("ETCD_ENDPOINTS", "https://127.0.0.1:2379")
    monkeypatch.setenv("ETCD_MEMBERS", "3")
    assert [str(e) for _, e in stack._members(3)] == [
        "https://127.0.0.1:2379", "https://127.0.0.1:22379", "https://127.0.0.1:32379"]
    monkeypatch.setenv("ETCD_MEMBERS", "2")
    with pytest.raises(config.ConfigError, match=r"Invalid ETCD_MEMBERS '2': give 1 or 3\."):
        stack.members_wanted()


def test_every_etcd_we_start_compacts_its_history(tmp_path):
    argv = launch.etcd_argv("m1", tmp_path, 1, 2, {"m1": 2, "m2": 3})
    assert " ".join(launch.COMPACTION) in " ".join(argv)
    compose = (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()
    starts = re.findall(r"^\s*etcd --name.*?(?=\n\s*until|\n\s*wait)", compose, re.M | re.S)
    assert starts and all("--auto-compaction-mode=periodic --auto-compaction-retention=1h"
                          in s for s in starts)
