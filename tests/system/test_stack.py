"""`make up`'s control plane (tools.stack) as an operator meets it: TLS on every
TCP port, calicoctl working with the admin certificate it made."""

import os
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cli import ROOT
from tools import launch


def calicoctl_only(env, *args):
    """calicoctl with exactly ``env`` (none of the test session's certificates)."""
    return subprocess.run([sys.executable, "-m", "cli.calicoctl", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def stack(command, env):
    return subprocess.run([sys.executable, "-m", "tools.stack", command], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


def test_make_up_serves_tls_only_and_calicoctl_finds_its_certificates(tmp_path):
    ports = {name: launch.free_port() for name in ("etcd", "ipam", "policy", "bgp")}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALICO_TLS_", "ETCD_"))}
    env.update(STATE_DIR=str(tmp_path / "state"), CALICO_PKI_DIR=str(tmp_path / "pki"),
               ETCD_ENDPOINTS=f"https://127.0.0.1:{ports['etcd']}",
               CALICO_IPAM_ADDR=f"127.0.0.1:{ports['ipam']}",
               CALICO_POLICY_ADDR=f"127.0.0.1:{ports['policy']}",
               CALICO_BGP_ADDR=f"127.0.0.1:{ports['bgp']}")
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stderr
        assert "mutual TLS" in up.stdout and "TLS and authentication on" in up.stdout
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
        assert "10.84.0.0/16" in calicoctl_only(env, "pool", "show").stdout
        assert "Removed" in calicoctl_only(env, "reset", "--yes").stdout     # etcd, with TLS
    finally:
        down = stack("down", env)
        assert down.returncode == 0, down.stderr
