"""A cluster service's metrics and logs, from its own process over real etcd:
a scrape of its metrics port shows what known calls did (an allocation, a
call the authorisation table refused), and its JSON log lines parse and
name the caller's request id."""

from __future__ import annotations

import json
import re
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import request_id
from calicopy.rpc import Client
from tests.integration.ipam_process import ipam_process, wait_for_log
from tools.lab import Identities

POOL = "10.231.0.0/16"
DENIED = "calico.ipam.v1.IpamService/CreatePool"


def scrape(url: str) -> dict:
    """name -> family (counters by their name without _total)."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, name: str, sample: str, **labels) -> float:
    for s in families[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def metrics_url(log) -> str:
    wait_for_log(log, "serving metrics on ")
    for line in log.read_text().splitlines():
        found = re.search(r"serving metrics on (http://\S+?/metrics)", line)
        if found:
            return found.group(1)
    raise AssertionError(f"no metrics address in {log}")


@pytest.fixture
def ipam(etcd, pki_dir, store, tmp_path):
    """The IPAM service's process, metrics on a free port, logs in JSON."""
    log = tmp_path / "ipam.log"
    with ipam_process(etcd, pki_dir, log, "--metrics=127.0.0.1:0", "--gc-interval=0",
                      env={"CALICO_LOG_FORMAT": "json"}) as (proc, addr):
        yield addr, log, metrics_url(log)


def test_a_scrape_shows_allocations_pool_usage_and_refused_calls(ipam, pki_dir):
    addr, log, url = ipam
    identities = Identities(pki_dir)
    before = scrape(url)
    assert value(before, "calico_ipam_allocations", "calico_ipam_allocations_total",
                 family="4") == 0
    with Client("IPAM service", addr, ipam_pb2_grpc.IpamServiceStub, 10,
                security=identities.security("admin")) as admin:
        admin.invoke("CreatePool", ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr=POOL)))
        with request_id.request("itest-alloc-1"):
            got = admin.invoke("AutoAssign", ipam_pb2.AutoAssignRequest(
                num_ipv4=2, handle_id="h1/test/w1", hostname="h1"))
    assert len(got.ipv4) == 2
    with Client("IPAM service", addr, ipam_pb2_grpc.IpamServiceStub, 10,
                security=identities.security("node:h1")) as node:
        with pytest.raises(grpc.RpcError) as refused:
            node.invoke("CreatePool", ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr="10.232.0.0/16")))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    after = scrape(url)
    assert value(after, "calico_ipam_allocations", "calico_ipam_allocations_total",
                 family="4") == 2
    assert value(after, "calico_grpc_server_handled", "calico_grpc_server_handled_total",
                 method=DENIED, code="PERMISSION_DENIED") == 1
    assert value(after, "calico_grpc_server_handled", "calico_grpc_server_handled_total",
                 method=DENIED, code="OK") == 1
    assert value(after, "calico_grpc_server_handling_seconds",
                 "calico_grpc_server_handling_seconds_count",
                 method="calico.ipam.v1.IpamService/AutoAssign") == 1
    assert value(after, "calico_ipam_pool_addresses", "calico_ipam_pool_addresses",
                 pool=POOL, state="allocated") == 2
    assert value(after, "calico_ipam_pool_addresses", "calico_ipam_pool_addresses",
                 pool=POOL, state="size") == 65536
    assert "process_resident_memory_bytes" in after      # prometheus_client's own

    # Every line is one JSON object; the allocation's names the caller's id.
    wait_for_log(log, "itest-alloc-1")
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all(d["component"] == "ipam" and d["level"] and d["time"] for d in lines)
    mine = [d for d in lines if d.get("request_id") == "itest-alloc-1"]
    assert any("AutoAssign answered OK to admin" in d["msg"] for d in mine), mine
    assert any("CreatePool answered PERMISSION_DENIED to node:h1" in d["msg"] for d in lines)


def test_a_bad_metrics_address_is_refused_with_one_line(etcd, tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "services.ipam", "--metrics=9181",
                           f"--listen=unix:{tmp_path}/ipam.sock", f"--etcd-endpoints={etcd}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("Invalid metrics address '9181' (from command line): "
                                   "'9181' is not host:port (or off)")
