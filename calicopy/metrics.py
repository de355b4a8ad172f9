"""Every calico-py metric, declared once, and how processes serve them.

Metrics are counted in plain Python here (a dict per family, under a lock),
so code that counts imports nothing more and costs nothing where nobody
serves them (calicoctl, the CNI plugin, unit tests). Names follow
Prometheus' conventions: ``calico_<component>_<what>_<unit>``, counters end
in ``_total``, durations are histograms in ``_seconds``.

Where they are served (Prometheus scrapes HTTP over TCP):

- each cluster service (IPAM, policy, BGP) serves its own on a loopback port
  (``serve``; its ``--metrics`` flag or CALICO_METRICS_ADDR);
- a node serves one port for all its processes: each child writes its
  counts to ``<node dir>/metrics/<process>.json`` when they change (at most
  once a second, ``export_to_node``) and the supervisor, the one process of
  the node that imports prometheus_client (about 4 MB of private memory per
  process that does), serves them with a ``process`` label (``serve_node``).
  A scrape so sees a child's counts at most a second late.

Invariants: a family's labels never change; a counter only grows within a
process's life (a restarted process starts again from zero, which Prometheus'
rate() understands); every family a process owns is exposed from its start,
with or without samples, so dashboards and tests find it.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)

#: Latency buckets (seconds) shared by every histogram: 1 ms to 30 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0)

#: Processes, as metrics and the node's ``process`` label name them.
SERVICES = ("ipam", "policy", "bgp")
NODE_PROCESSES = ("node", "endpoint", "policy-agent", "bird-renderer", "ipip",
                  "docker-plugin", "docker-proxy")
GRPC_SERVERS = ("ipam", "policy", "bgp", "endpoint")
WATCHERS = ("policy-agent", "bird-renderer", "ipip")
EVERY = SERVICES + NODE_PROCESSES


class Family:
    """One metric family: counter, gauge or histogram, with fixed label names.
    ``owners`` are the processes that expose it even before it has samples."""

    def __init__(self, kind: str, name: str, doc: str, labels: tuple[str, ...] = (),
                 owners: tuple[str, ...] = ()):
        self.kind, self.name, self.doc = kind, name, doc
        self.labels, self.owners = tuple(labels), tuple(owners)
        self._values: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()
        self._function: Callable[[], Iterable[tuple[tuple[str, ...], float]]] | None = None

    def _key(self, labels: dict) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, not {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labels)

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount
        _changed()

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            same = self._values.get(key) == float(value)
            self._values[key] = float(value)
        if not same:        # a gauge set to what it was is no news for the exporter
            _changed()

    def replace(self, values: dict[tuple[str, ...], float]) -> None:
        """A gauge's whole set of samples at once (label values -> value)."""
        new = {tuple(map(str, k)): float(v) for k, v in values.items()}
        with self._lock:
            same = new == self._values
            self._values = new
        if not same:
            _changed()

    def set_function(self, function: Callable[[], Iterable[tuple[tuple[str, ...], float]]]
                     ) -> None:
        """A gauge read when it is scraped: ``function()`` gives its samples."""
        self._function = function

    def observe(self, seconds: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._values.get(key)
            if counts is None:
                counts = self._values[key] = [[0] * len(BUCKETS), 0.0, 0]
            i = bisect.bisect_left(BUCKETS, seconds)
            if i < len(BUCKETS):
                counts[0][i] += 1
            counts[1] += seconds
            counts[2] += 1
        _changed()

    @contextmanager
    def time(self, **labels):
        """Observe how long the ``with`` block took (failures included)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.observe(time.monotonic() - start, **labels)

    def value(self, **labels) -> object:
        """One sample's value (histograms: [bucket counts, sum, count]); for tests."""
        with self._lock:
            return self._values.get(self._key(labels))

    def samples(self) -> list:
        if self._function is not None:
            try:
                return [[list(map(str, k)), float(v)] for k, v in self._function()]
            except Exception as exc:      # a scrape must not fail on one gauge
                log.warning("cannot read %s: %s", self.name, exc)
                return []
        with self._lock:
            return [[list(k), json.loads(json.dumps(v))] for k, v in self._values.items()]

    def snapshot(self) -> dict:
        return {"name": self.name, "kind": self.kind, "doc": self.doc,
                "labels": list(self.labels), "samples": self.samples()}


FAMILIES: list[Family] = []


def _declare(kind, name, doc, labels=(), owners=()) -> Family:
    family = Family(kind, name, doc, labels, owners)
    FAMILIES.append(family)
    return family


# gRPC (calicopy.rpc): every server's calls, and every Client's ----------------
GRPC_SERVER_HANDLED = _declare(
    "counter", "calico_grpc_server_handled_total",
    "gRPC calls this server completed, by method and status code",
    ("method", "code"), GRPC_SERVERS)
GRPC_SERVER_SECONDS = _declare(
    "histogram", "calico_grpc_server_handling_seconds",
    "time this server took to answer a gRPC call", ("method",), GRPC_SERVERS)
GRPC_CLIENT_HANDLED = _declare(
    "counter", "calico_grpc_client_handled_total",
    "gRPC calls this process made to a service, by method and status code",
    ("method", "code"))
GRPC_CLIENT_SECONDS = _declare(
    "histogram", "calico_grpc_client_handling_seconds",
    "time a gRPC call this process made took (retries included)", ("method",))

# etcd watches (calicopy.datastore.watchloop) and malformed records -----------
WATCH_RESTARTS = _declare(
    "counter", "calico_datastore_watch_restarts_total",
    "times an etcd watch ended (compaction, cancel, a member lost) and was rebuilt",
    (), WATCHERS)
SYNC_SECONDS = _declare(
    "histogram", "calico_datastore_sync_seconds",
    "time one pass of a process keeping the kernel or BIRD in step with etcd took "
    "(the policy agent's: policy programming latency); kind full or update",
    ("kind",), WATCHERS)
QUARANTINED = _declare(
    "gauge", "calico_quarantine_records",
    "malformed records this process is skipping (calicopy.quarantine)", (),
    ("endpoint", "policy-agent", "bird-renderer"))

# IPAM (services/ipam) ----------------------------------------------------------
IPAM_ALLOCATIONS = _declare(
    "counter", "calico_ipam_allocations_total",
    "addresses allocated (AutoAssign, AssignIP), by IP version", ("family",), ("ipam",))
IPAM_RELEASES = _declare(
    "counter", "calico_ipam_releases_total",
    "addresses released (by address, by handle, with a host), by IP version", ("family",),
    ("ipam",))
IPAM_POOL_ADDRESSES = _declare(
    "gauge", "calico_ipam_pool_addresses",
    "a pool's addresses: its size, and how many are allocated (read from etcd at scrape)",
    ("pool", "state"), ("ipam",))
IPAM_GC_RELEASES = _declare(
    "counter", "calico_ipam_gc_releases_total",
    "allocations the garbage collector released (their owner was gone)", (), ("ipam",))
IPAM_GC_PASSES = _declare(
    "counter", "calico_ipam_gc_passes_total",
    "garbage collection passes, by result (ok or error)", ("result",), ("ipam",))

# The endpoint service (services/endpoint) ------------------------------------
ENDPOINT_ADDS = _declare(
    "counter", "calico_endpoint_adds_total",
    "endpoint adds, by result (ok or the error's kind)", ("result",), ("endpoint",))
ENDPOINT_ADD_SECONDS = _declare(
    "histogram", "calico_endpoint_add_seconds",
    "time an endpoint add took, policy wait included (successful adds)", (), ("endpoint",))
ENDPOINT_REMOVES = _declare(
    "counter", "calico_endpoint_removes_total",
    "endpoint removes, by result (ok or the error's kind)", ("result",), ("endpoint",))
ENDPOINT_REMOVE_SECONDS = _declare(
    "histogram", "calico_endpoint_remove_seconds",
    "time an endpoint remove took (successful removes)", (), ("endpoint",))

# The policy agent (node/policy) ------------------------------------------------
POLICY_RESTORE_SECONDS = _declare(
    "histogram", "calico_policy_restore_seconds",
    "time one iptables-restore, ip6tables-restore or ipset restore took, by tool",
    ("tool",), ("policy-agent",))
POLICY_RESTORE_FAILURES = _declare(
    "counter", "calico_policy_restore_failures_total",
    "iptables-restore, ip6tables-restore or ipset restore runs that failed, by tool",
    ("tool",), ("policy-agent",))

# The BIRD renderer (node/bird) ------------------------------------------------
BGP_SESSIONS = _declare(
    "gauge", "calico_bgp_sessions",
    "this node's BGP sessions as BIRD reports them, by IP version and BGP state",
    ("family", "state"), ("bird-renderer",))
BGP_FLAPS = _declare(
    "counter", "calico_bgp_session_flaps_total",
    "times one of this node's established BGP sessions left Established",
    ("family",), ("bird-renderer",))

# The Docker plugin and the CALICO_IP proxy -----------------------------------
DOCKER_PLUGIN_REQUESTS = _declare(
    "counter", "calico_docker_plugin_requests_total",
    "libnetwork requests the Docker plugin answered, by method and HTTP status",
    ("method", "status"), ("docker-plugin",))
DOCKER_PLUGIN_SECONDS = _declare(
    "histogram", "calico_docker_plugin_request_seconds",
    "time the Docker plugin took to answer a libnetwork request", ("method",),
    ("docker-plugin",))
DOCKER_PROXY_NETWORKED = _declare(
    "counter", "calico_docker_proxy_containers_total",
    "containers the CALICO_IP proxy networked at start, by result (ok or error)",
    ("result",), ("docker-proxy",))

# The node supervisor ------------------------------------------------------------
NODE_RESTARTS = _declare(
    "counter", "calico_node_child_restarts_total",
    "times the supervisor restarted one of the node's processes after it exited",
    ("child",), ("node",))


# Change tracking, for the node's exporters ------------------------------------
_version = 0


_wakes: list[threading.Event] = []     # one per exporter: set on every change (and its stop)
IDLE_EXPORT = 60.0             # the longest it sleeps all the same


def _changed() -> None:
    global _version
    _version += 1      # a lost increment only delays an export by a pass
    for wake in tuple(_wakes):
        wake.set()


def snapshot(process: str) -> list[dict]:
    """What ``process`` exposes: the families it owns and any with samples."""
    found = []
    for family in FAMILIES:
        snap = family.snapshot()
        if process in family.owners or snap["samples"]:
            found.append(snap)
    return found


# Serving ------------------------------------------------------------------------

def node_metrics_dir(node_dir: Path) -> Path:
    return Path(node_dir) / "metrics"


def export_to_node(process: str, node_dir: Path, stop: threading.Event | None = None,
                   every: float = 1.0) -> threading.Thread:
    """A node child's exporter: writes its snapshot for the supervisor to
    serve, at start and then whenever a count changed (at most every
    ``every`` seconds). Returns the (daemon) thread."""
    folder = node_metrics_dir(node_dir)
    path = folder / f"{process}.json"
    stop = stop or threading.Event()
    wake = threading.Event()        # this exporter's: sleeps until a change or its stop
    _wakes.append(wake)

    def write() -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"process": process, "families": snapshot(process)}))
        os.replace(tmp, path)

    def loop() -> None:
        written = -1
        while True:
            wake.clear()
            version = _version
            functions = any(f._function for f in FAMILIES)
            if version != written or functions:
                try:
                    write()
                    written = version
                except OSError as exc:
                    log.warning("cannot write metrics to %s: %s", path, exc)
            if stop.wait(every):
                _wakes.remove(wake)
                return
            # An idle process does not wake until a count changes (or its
            # stop); one with values computed at scrape time writes every pass.
            if not functions and version == written:
                wake.wait(IDLE_EXPORT)
                if stop.is_set():
                    _wakes.remove(wake)
                    return

    thread = threading.Thread(target=loop, name="metrics-export", daemon=True)
    thread.start()
    threading.Thread(target=lambda: (stop.wait(), wake.set()), name="metrics-export-stop",
                     daemon=True).start()
    return thread


def read_node(node_dir: Path, processes: Iterable[str]) -> list[tuple[str, list[dict]]]:
    """The snapshots the node's children wrote: (process, families)."""
    found = []
    for process in processes:
        try:
            data = json.loads((node_metrics_dir(node_dir) / f"{process}.json").read_text())
            found.append((process, data["families"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue           # not started yet, or being replaced
    return found


class _Collector:
    """prometheus_client's view of our families: from this process, and
    with ``children`` (the node) from the children's files too, each sample
    labelled with its process."""

    def __init__(self, process: str, children: Callable[[], list] | None = None):
        self.process, self.children = process, children

    def describe(self):
        return []          # collected at each scrape; nothing to check up front

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        sources = [(self.process, snapshot(self.process))]
        if self.children is not None:
            sources += self.children()
        node = self.children is not None
        merged: dict[str, object] = {}
        for process, families in sources:
            for fam in families:
                labels = (["process"] if node else []) + list(fam["labels"])
                out = merged.get(fam["name"])
                if out is None:
                    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                           "histogram": HistogramMetricFamily}[fam["kind"]]
                    out = merged[fam["name"]] = cls(fam["name"], fam["doc"], labels=labels)
                for values, value in fam["samples"]:
                    values = ([process] if node else []) + list(values)
                    if fam["kind"] == "histogram":
                        counts, total, count = value
                        running, buckets = 0, []
                        for bound, n in zip(BUCKETS, counts):
                            running += n
                            buckets.append((repr(float(bound)), running))
                        buckets.append(("+Inf", count))
                        out.add_metric(values, buckets, total)
                    else:
                        out.add_metric(values, value)
        return list(merged.values())


def _start_http(addr: str, collector: _Collector) -> str | None:
    """Serve the default registry (process metrics) and ``collector`` on
    ``addr``; returns the URL, or None when the port is taken (logged: metrics
    never stop a process from doing its job)."""
    from prometheus_client import REGISTRY, start_http_server
    host, _, port = addr.rpartition(":")
    REGISTRY.register(collector)
    try:
        server, _thread = start_http_server(int(port), addr=host.strip("[]"))
    except OSError as exc:
        log.warning("cannot serve metrics on %s: %s; serving none", addr, exc)
        return None
    bound = server.server_address[1]
    url = f"http://{host}:{bound}/metrics"
    log.info("serving metrics on %s", url)
    return url


def serve(process: str, addr: str | None) -> str | None:
    """Serve a cluster service's metrics on ``addr`` (None: serve none)."""
    return _start_http(addr, _Collector(process)) if addr else None


def serve_node(addr: str | None, node_dir: Path, processes: Iterable[str]) -> str | None:
    """The node's one metrics port: the supervisor's own families and its
    children's (``processes``), each sample labelled with its process."""
    if not addr:
        return None
    processes = tuple(processes)
    for stale in node_metrics_dir(node_dir).glob("*.json"):
        stale.unlink(missing_ok=True)      # a previous run's children's, maybe not started now
    return _start_http(addr, _Collector("node", lambda: read_node(node_dir, processes)))
