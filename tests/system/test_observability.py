"""What an operator sees of a node at work, with real components (a lab
node with its Docker engine, a second node as its BGP peer, the lab's
control plane): `calicoctl node` says where the metrics are; one scrape of
the node's port shows what a `docker run` did in each process (the plugin's
request, the endpoint add and its latency, the agent's restores and sync,
BGP sessions); every metric the Grafana dashboard names exists in a real
scrape; and the `docker run` can be followed by its request id through the
plugin's, the endpoint service's and IPAM's logs, and by its endpoint id
into the agent's."""

from __future__ import annotations

import json
import re
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from calicopy import logs
from tests.system.helpers import wait_for
from tests.unit.test_metrics import dashboard_metrics
from tools.docker_engine import IMAGE

SCRAPE = ("import sys, urllib.request; "
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")


def scrape(ns, url: str) -> dict:
    """A scrape from inside ``ns`` (metrics are served on its loopback):
    family name -> family."""
    text = ns.run(sys.executable, "-c", SCRAPE, url).stdout
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, sample: str, **labels) -> float:
    return sum(s.value for f in families.values() for s in f.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def log_lines(path) -> list[dict]:
    """Every line of a kv log, split into its fields."""
    return [logs.parse_kv(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def node_with_docker(lab, pools):
    a = lab.add_host("a", node=True, docker=True)
    lab.add_host("b", node=True)
    a.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico-ipam", "obs")
    return a


def test_a_docker_run_in_metrics_dashboard_and_logs(lab, node_with_docker):
    a = node_with_docker
    found = re.search(r"metrics on (http://127\.0\.0\.1:9180/metrics)\.$",
                      a.node_output.strip())
    assert found, a.node_output
    url = found.group(1)
    assert json.loads(a.paths.status.read_text())["metrics"] == url

    a.docker("run", "-d", "--name", "obs1", "--net", "obs", IMAGE, "sleep", "3600")
    samples = {}

    def moved() -> bool:
        samples.update(scrape(a.ns, url))
        return (value(samples, "calico_endpoint_adds_total", process="endpoint",
                      result="ok") >= 1
                and value(samples, "calico_bgp_sessions", process="bird-renderer",
                          family="4", state="Established") == 1
                and value(samples, "calico_docker_plugin_requests_total",
                          method="NetworkDriver.CreateEndpoint", status="200") == 1)
    wait_for("the docker run in the node's metrics", moved)
    assert value(samples, "calico_endpoint_add_seconds_count", process="endpoint") >= 1
    assert value(samples, "calico_endpoint_add_seconds_sum", process="endpoint") > 0
    assert value(samples, "calico_policy_restore_seconds_count", process="policy-agent",
                 tool="iptables-restore") >= 1
    assert value(samples, "calico_policy_restore_seconds_count", process="policy-agent",
                 tool="ipset") >= 1
    assert value(samples, "calico_policy_restore_failures_total") == 0
    assert value(samples, "calico_datastore_sync_seconds_count", process="policy-agent",
                 kind="full") >= 1
    assert value(samples, "calico_grpc_server_handled_total", process="endpoint",
                 method="calico.endpoint.v1.EndpointService/AddEndpoint", code="OK") == 1
    assert value(samples, "calico_grpc_client_handled_total", process="docker-plugin",
                 method="calico.endpoint.v1.EndpointService/AddEndpoint", code="OK") == 1

    # Every metric the dashboard names is in a real scrape: the node's or a
    # service's (the lab's control plane serves them on its own loopback).
    served = set(samples)
    for service, port in (("ipam", 9181), ("policy", 9182), ("bgp", 9183)):
        served |= set(scrape(lab.control, f"http://127.0.0.1:{port}/metrics"))
    named = {re.sub(r"_total$", "", name) for name in dashboard_metrics()}
    assert named <= served, named - served

    # One docker run, followed: the plugin's CreateEndpoint request id in the
    # endpoint service's log with the add, its endpoint id in the agent's;
    # the plugin's RequestAddress request id in IPAM's log.
    plugin = log_lines(a.paths.log("docker-plugin"))
    create = [d for d in plugin if d.get("msg") == "NetworkDriver.CreateEndpoint ok"]
    address = [d for d in plugin if d.get("msg") == "IpamDriver.RequestAddress ok"]
    assert len(create) == 1 and address, plugin
    rid = create[0]["request_id"]
    added = [d for d in log_lines(a.paths.log("endpoint"))
             if d.get("request_id") == rid and d["msg"].startswith("added endpoint ")]
    assert added and added[0]["component"] == "endpoint" and added[0]["node"] == "a", added
    endpoint_id = added[0]["msg"].split()[2]
    ipam_lines = log_lines(lab.control_dir / "ipam.log")
    assert any(d.get("request_id") == address[-1]["request_id"] and
               "IpamService/" in d["msg"] for d in ipam_lines), address[-1]
    programmed = [d for d in log_lines(a.paths.log("policy"))
                  if d["msg"].startswith("programmed endpoint(s)") and endpoint_id in d["msg"]]
    assert programmed and programmed[0]["component"] == "policy-agent", endpoint_id
