"""Metrics (calicopy.metrics): counting, the exposition Prometheus reads, the
node's files, and the call sites that count (gRPC server and client, IPAM,
the agent's restores, BIRD's sessions), with an in-process gRPC server on a
unix socket and the in-memory store."""

import json
import re
import threading
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import metrics, request_id
from calicopy.rpc import Client
from node.bird.ctl import Session
from node.bird.renderer import count_sessions
from node.policy import commands
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from services.ipam.servicer import IpamServicer
from tests.fakes import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


def scrape(process: str, children=None) -> dict:
    """name -> prometheus_client's family, as a scrape of ``process`` reads it."""
    registry = CollectorRegistry()
    registry.register(metrics._Collector(process, children))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict, name: str, suffix: str = "", **labels) -> float | None:
    family = families[name]
    for s in family.samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_a_family_refuses_labels_it_was_not_declared_with():
    with pytest.raises(ValueError, match="takes labels"):
        metrics.ENDPOINT_ADDS.inc(outcome="ok")


def test_histograms_are_exposed_with_cumulative_buckets():
    family = metrics.Family("histogram", "calico_test_seconds", "test", ("kind",))
    metrics.FAMILIES.append(family)
    try:
        family.observe(0.003, kind="a")
        family.observe(0.2, kind="a")
        family.observe(100.0, kind="a")        # beyond the last bucket: +Inf only
        found = scrape("test")["calico_test_seconds"]
        buckets = {s.labels["le"]: s.value for s in found.samples if s.name.endswith("_bucket")}
        assert buckets["0.0025"] == 0 and buckets["0.005"] == 1 and buckets["0.25"] == 2
        assert buckets["30.0"] == 2 and buckets["+Inf"] == 3
        assert [s.value for s in found.samples if s.name.endswith("_count")] == [3]
    finally:
        metrics.FAMILIES.remove(family)


def test_a_process_exposes_the_families_it_owns_before_any_sample():
    families = scrape("ipam")
    for name in ("calico_ipam_allocations", "calico_ipam_gc_releases",
                 "calico_grpc_server_handling_seconds"):
        assert name in families          # counters are named without _total here
    assert "calico_bgp_session_flaps" not in families or metrics.BGP_FLAPS.samples()


def test_the_node_serves_its_childrens_files_labelled_by_process(tmp_path):
    stop = threading.Event()
    metrics.BGP_SESSIONS.replace({("4", "Established"): 2})
    thread = metrics.export_to_node("bird-renderer", tmp_path, stop, every=0.05)
    try:
        path = tmp_path / "metrics" / "bird-renderer.json"
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            stop.wait(0.05)
        assert json.loads(path.read_text())["process"] == "bird-renderer"
    finally:
        stop.set()
        thread.join()
    families = scrape("node", lambda: metrics.read_node(tmp_path, ["bird-renderer", "ipip"]))
    assert sample(families, "calico_bgp_sessions", process="bird-renderer", family="4",
                  state="Established") == 2
    assert "calico_node_child_restarts" in families


def test_bgp_sessions_by_state_and_a_flap_when_one_leaves_established():
    up = Session("172.30.0.3", "Mesh", "up", "10:00", "Established", 4)
    down = Session("172.30.0.3", "Mesh", "start", "10:01", "Active", 4)
    before = metrics.BGP_FLAPS.value(family="4") or 0
    seen = count_sessions([up], set())
    assert metrics.BGP_SESSIONS.value(family="4", state="Established") == 1
    seen = count_sessions([down], seen)
    assert metrics.BGP_FLAPS.value(family="4") == before + 1
    assert metrics.BGP_SESSIONS.value(family="4", state="Active") == 1
    assert metrics.BGP_SESSIONS.value(family="4", state="Established") is None
    count_sessions([down], seen)               # still down: no second flap
    assert metrics.BGP_FLAPS.value(family="4") == before + 1


def test_restores_are_timed_by_tool_and_failures_counted():
    def run(argv, stdin="", **kwargs):
        if "fail" in stdin:
            raise commands.CommandError(argv, 1, "", "iptables-restore: line 3 failed")
        return ""
    measured = commands.measured(run)
    count = (metrics.POLICY_RESTORE_SECONDS.value(tool="iptables-restore") or [0, 0, 0])[2]
    failures = metrics.POLICY_RESTORE_FAILURES.value(tool="ip6tables-restore") or 0
    measured(["iptables-nft-restore", "--noflush"], "*filter\nCOMMIT\n")
    with pytest.raises(commands.CommandError):
        measured(["ip6tables-legacy-restore", "--noflush"], "fail")
    measured(["ipset", "save"])                   # a read: not a restore
    assert metrics.POLICY_RESTORE_SECONDS.value(tool="iptables-restore")[2] == count + 1
    assert metrics.POLICY_RESTORE_FAILURES.value(tool="ip6tables-restore") == failures + 1


class _Recorder:
    """An authorizer that refuses pools and notes each call's request id."""

    def __init__(self):
        self.seen = []

    def check(self, identity, method, request):
        self.seen.append(request_id.current())
        return "pools are the administrator's." if method.endswith("CreatePool") else None


@pytest.fixture
def ipam_server(tmp_path):
    authz = _Recorder()
    server, _ = create_server(f"unix:{tmp_path}/ipam.sock", Ipam(MemoryStore()),
                              authorizer=authz)
    server.start()
    try:
        yield f"unix:{tmp_path}/ipam.sock", authz
    finally:
        server.stop(None)


def test_grpc_calls_are_counted_by_method_and_code_with_the_callers_request_id(ipam_server):
    addr, authz = ipam_server
    pool = ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.9.0.0/16"))
    method = "calico.ipam.v1.IpamService/CreatePool"
    before = metrics.GRPC_SERVER_HANDLED.value(method=method, code="PERMISSION_DENIED") or 0
    sent = metrics.GRPC_CLIENT_HANDLED.value(method=method, code="PERMISSION_DENIED") or 0
    with Client("IPAM service", addr, ipam_pb2_grpc.IpamServiceStub, 5) as client:
        with request_id.request("req-under-test"), pytest.raises(grpc.RpcError):
            client.invoke("CreatePool", pool)
        client.invoke("ListPools", ipam_pb2.ListPoolsRequest())
    assert metrics.GRPC_SERVER_HANDLED.value(method=method, code="PERMISSION_DENIED") == \
        before + 1
    assert metrics.GRPC_CLIENT_HANDLED.value(method=method, code="PERMISSION_DENIED") == \
        sent + 1
    assert metrics.GRPC_SERVER_HANDLED.value(method="calico.ipam.v1.IpamService/ListPools",
                                             code="OK") >= 1
    assert metrics.GRPC_SERVER_SECONDS.value(method=method)[2] >= 1
    # The caller's id for the first call; a new one made by the server for the second.
    assert authz.seen[0] == "req-under-test"
    assert authz.seen[1] and authz.seen[1] != "req-under-test"


def test_allocations_and_releases_are_counted_by_ip_version():
    before4 = metrics.IPAM_ALLOCATIONS.value(family="4") or 0
    released = metrics.IPAM_RELEASES.value(family="4") or 0
    store = MemoryStore()
    Ipam(store).create_pool("10.7.0.0/16")

    class Context:
        def time_remaining(self):
            return None
    servicer = IpamServicer(Ipam(store))
    got = servicer.AutoAssign(ipam_pb2.AutoAssignRequest(num_ipv4=2, handle_id="h1",
                                                         hostname="a"), Context())
    assert len(got.ipv4) == 2
    servicer.ReleaseByHandle(ipam_pb2.ReleaseByHandleRequest(handle_id="h1"), Context())
    assert metrics.IPAM_ALLOCATIONS.value(family="4") == before4 + 2
    assert metrics.IPAM_RELEASES.value(family="4") == released + 2


def dashboard_metrics() -> set[str]:
    """Every metric the dashboard's queries name, histograms by family name."""
    doc = json.loads(DASHBOARD.read_text())
    names = set()
    for panel in doc["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bcalico_[a-z0-9_]+", target["expr"]):
                names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def test_the_dashboard_loads_and_every_panel_queries_prometheus():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] and doc["panels"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in doc["panels"]:
        assert panel["type"] in ("timeseries", "stat", "gauge", "table"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"] and target["refId"], panel["title"]
            assert target["datasource"]["type"] == "prometheus"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


def test_the_dashboard_names_only_declared_metrics_and_every_declared_one():
    declared = {f.name for f in metrics.FAMILIES}
    named = dashboard_metrics()
    assert named <= declared, named - declared
    assert declared <= named, declared - named


def test_the_readme_lists_every_metric_with_its_type_and_labels():
    readme = (ROOT / "README.md").read_text()
    for family in metrics.FAMILIES:
        row = next((line for line in readme.splitlines()
                    if line.startswith(f"| `{family.name}` |")), None)
        assert row is not None, family.name
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == family.kind, family.name
        assert cells[2] == (", ".join(f"`{n}`" for n in family.labels) or "-"), family.name


def test_only_the_supervisor_and_the_services_import_prometheus_client():
    """The node's memory budget: its children count in plain Python."""
    import subprocess
    import sys
    children = ("services.endpoint", "node.policy", "node.bird", "node.ipip",
                "node.docker_plugin", "node.docker_proxy")
    code = ("import importlib, sys\n"
            f"for m in {children!r}: importlib.import_module(m + '.__main__')\n"
            "print('prometheus_client' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_an_idle_process_writes_its_counts_only_when_they_change(tmp_path):
    """The exporter sleeps until a count changes (a gauge set to the value it
    had is no change): an idle node process does not wake every second."""
    stop = threading.Event()
    metrics.BGP_SESSIONS.replace({("4", "Established"): 1})
    thread = metrics.export_to_node("bird-renderer", tmp_path, stop, every=0.05)
    path = tmp_path / "metrics" / "bird-renderer.json"
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            stop.wait(0.05)
        first = path.stat().st_mtime_ns
        metrics.BGP_SESSIONS.replace({("4", "Established"): 1})     # the same again
        stop.wait(0.5)
        assert path.stat().st_mtime_ns == first
        metrics.BGP_SESSIONS.replace({("4", "Established"): 2})
        deadline = time.monotonic() + 10
        while path.stat().st_mtime_ns == first and time.monotonic() < deadline:
            stop.wait(0.05)
        assert path.stat().st_mtime_ns != first
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()        # a stop wakes it from its idle sleep
