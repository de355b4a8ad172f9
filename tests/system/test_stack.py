"""`make up`'s control plane (tools.stack) as an operator meets it: TLS on every
TCP port, calicoctl working with the admin certificate it made; with
ETCD_MEMBERS=3, a 3-member etcd, and two replicas of each service."""

import os
import re
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.cli import ROOT
from tools import launch


def calicoctl_only(env, *args):
    """calicoctl with exactly ``env`` (none of the test session's certificates)."""
    return subprocess.run([sys.executable, "-m", "cli.calicoctl", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def stack(command, env):
    return subprocess.run([sys.executable, "-m", "tools.stack", command], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


@pytest.mark.parametrize("members", [1, 3])
def test_make_up_serves_tls_only_and_calicoctl_finds_its_certificates(tmp_path, members):
    ports = {f"{name}{n}": launch.free_port() for name, count in
             (("etcd", members), ("ipam", 2), ("policy", 2), ("bgp", 2))
             for n in range(count)}

    def listed(name, scheme=""):
        return ",".join(f"{scheme}127.0.0.1:{p}" for k, p in ports.items() if k[:-1] == name)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALICO_TLS_", "ETCD_"))}
    env.update(STATE_DIR=str(tmp_path / "state"), CALICO_PKI_DIR=str(tmp_path / "pki"),
               ETCD_MEMBERS=str(members), ETCD_ENDPOINTS=listed("etcd", "https://"),
               CALICO_IPAM_ADDR=listed("ipam"), CALICO_POLICY_ADDR=listed("policy"),
               CALICO_BGP_ADDR=listed("bgp"))
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stderr
        assert "mutual TLS" in up.stdout and "TLS and authentication on" in up.stdout
        assert ("etcd (3 members, peers TLS) started" if members == 3 else
                "etcd            started") in up.stdout
        assert up.stdout.count("replica 2     started") == 3
        # What clients are told to use names every member and replica.
        told = dict(line.split()[1].split("=", 1) for line in
                    (tmp_path / "state" / "client.env").read_text().splitlines())
        assert told == {k: env[k] for k in ("ETCD_ENDPOINTS", "CALICO_IPAM_ADDR",
                                            "CALICO_POLICY_ADDR", "CALICO_BGP_ADDR")}
        assert stack("up", env).stdout.count("already running") == 7      # idempotent
        for name, port in ports.items():        # plaintext, health check included: refused
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=3)
                    answered = True
                except grpc.RpcError:
                    answered = False
            assert not answered, f"{name} answered a plaintext health check"
        # calicoctl takes the admin certificate from the certificate folder.
        added = calicoctl_only(env, "pool", "add", "10.84.0.0/16")
        assert added.returncode == 0, added.stderr
        # Each service replica says where its metrics are; they count that call.
        urls = re.findall(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", up.stdout)
        assert len(set(urls)) == 6, up.stdout
        created = 0.0
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as answer:
                for family in text_string_to_metric_families(answer.read().decode()):
                    created += sum(x.value for x in family.samples if x.labels == {
                        "method": "calico.ipam.v1.IpamService/CreatePool", "code": "OK"})
        assert created == 1
        assert "10.84.0.0/16" in calicoctl_only(env, "pool", "show").stdout
        # A replica and a member die: calicoctl carries on with the others.
        os.kill(int((tmp_path / "state" / "ipam.pid").read_text()), 9)
        if members == 3:
            os.kill(int((tmp_path / "state" / "etcd1.pid").read_text()), 9)
        assert "10.84.0.0/16" in calicoctl_only(env, "pool", "show").stdout
        assert "Removed" in calicoctl_only(env, "reset", "--yes").stdout     # etcd, with TLS
    finally:
        down = stack("down", env)
        assert down.returncode == 0, down.stderr
