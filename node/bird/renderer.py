"""The BIRD config renderer: keeps one node's BIRD configuration in step with
etcd, and reports the node's BGP sessions back.

Run by the shared watch loop (calicopy.datastore.watchloop): it reads the
cluster's records into its model (node.bird.view) on start, after any end
of its watch and every RESYNC seconds, and applies the watch's events to the
model in between (events at or before its last full read are already in
it). Every pass that changed the model, and every POLL seconds regardless (so
a peer that becomes directly connected, or stops being so, is re-rendered),
it renders from the model: no etcd read. Events that change nothing it is
made of (another host's allocations in its blocks, workloads) end there: in
a busy cluster, a host's renderer does not work for every other host's adds. A new configuration is written to a temporary file,
checked with `bird -p`, moved into place atomically, and BIRD is told to
`configure` only when the text changed. A malformed node, peer, pool or block
record is left out, as if absent, and reported once (calicopy.quarantine).
Every couple of seconds it reads the sessions BIRD reports (over BIRD's
control socket, no process) and writes them to etcd when they changed, under
a lease that keep-alives hold (calicopy.datastore.report): the report
vanishes if the node stops, and an idle node adds nothing to etcd's history.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from pyroute2 import IPRoute

from calicopy import failpoints, metrics, underlay
from calicopy.datastore import keys
from calicopy.datastore.etcd_watch import change
from calicopy.datastore.report import LeasedReport
from calicopy.datastore.store import Store
from calicopy.datastore.watchloop import WatchLoop
from calicopy.quarantine import Quarantine
from node.bird import conf, ctl
from node.bird.view import BirdView

log = logging.getLogger("calico-bird-renderer")

RESYNC = 60.0
POLL = 5.0
REPORT_EVERY = 3.0
REPORT_TTL = 10


def current_model(store: Store, name: str, bad: dict[str, str] | None = None,
                  connected=underlay.on_link) -> conf.BirdModel | None:
    """The BIRD model for node ``name`` from etcd (and, for which peers are
    directly connected, the host's routes); None until it is registered (or
    while its own record is malformed). Malformed records are left out, as if
    absent, and listed in ``bad`` (key -> what is wrong) when given."""
    view = BirdView(name)
    view.load(store.snapshot(keys.PREFIX)[1])
    return view.model({} if bad is None else bad, connected)


def count_sessions(sessions: list[ctl.Session], established: set[tuple[str, int]]
                   ) -> set[tuple[str, int]]:
    """Set calico_bgp_sessions from what BIRD reports, and count a flap for
    each session that was Established at the last look (``established``)
    and is not now (or is gone). Returns the sessions established now."""
    counts: dict[tuple[str, str], int] = {}
    now = set()
    for s in sessions:
        state = s.info or s.state or "unknown"
        key = (str(s.ip_version), state)
        counts[key] = counts.get(key, 0) + 1
        if state == "Established":
            now.add((s.peer, s.ip_version))
    metrics.BGP_SESSIONS.replace(counts)
    for _peer, version in sorted(established - now):
        metrics.BGP_FLAPS.inc(family=str(version))
    return now


class Renderer:
    def __init__(self, store: Store, name: str, config_path: Path, ctl: str,
                 quarantine: Quarantine | None = None, connected=None):
        self.store, self.name, self.path, self.ctl = store, name, config_path, ctl
        self.quarantine = quarantine or Quarantine(log)
        self.view = BirdView(name)
        self.revision = 0                      # of the newest record the view holds
        self._read_at = 0                      # the revision of the last full read
        self._loaded = False
        self._connected = connected        # None: the host's routes (calicopy.underlay)
        self._configured: str | None = None    # the text BIRD last accepted
        self.status = LeasedReport(store, keys.bgp_status(name), REPORT_TTL)
        self._established: set[tuple[str, int]] = set()    # (peer, IP version) up last time
        self._modelled_at = float("-inf")      # when the model was last made
        self._ipr: IPRoute | None = None       # kept open: one per pass cost more than the pass

    def _on_link(self, ip: str) -> bool:
        """underlay.on_link over the renderer's own netlink socket (opened
        again after a failure)."""
        if self._ipr is None:
            self._ipr = IPRoute()
        try:
            return underlay.on_link(ip, self._ipr)
        except Exception:
            self._ipr.close()
            self._ipr = None
            raise

    def sync(self, full: bool = False, events=()) -> bool:
        """Bring the model up to date (a full read, or the events), render and,
        if the text differs from what BIRD last accepted, install and reload.
        Says whether it did."""
        changed = full or not self._loaded
        if changed:
            self.revision, kvs = self.store.snapshot(keys.PREFIX)
            self._read_at = self.revision
            self.view.load(kvs)
            self._loaded = True
        else:
            for event in events:
                key, value, revision = change(event)
                if revision > self._read_at:        # else already in the last full read
                    self.revision = max(self.revision, revision)
                    changed = self.view.apply(key, value) or changed
        # Events that changed nothing BIRD is configured from (another host's
        # allocations, workloads...) cost no more than their decoding; a pass
        # without events (the poll) looks again at which peers are connected.
        now = time.monotonic()
        if events and not changed and now - self._modelled_at < POLL:
            return False
        self._modelled_at = now
        bad: dict[str, str] = {}
        if self._connected is not None:
            model = self.view.model(bad, self._connected)
        else:
            model = self.view.model(bad, self._on_link)
        self.quarantine.update(keys.PREFIX, bad)
        if model is None:
            return False
        text = conf.render(model)
        bird_up = os.path.exists(self.ctl)
        if text == self._configured and bird_up:
            return False
        if not self.path.exists() or self.path.read_text() != text:
            tmp = self.path.with_suffix(".new")
            tmp.write_text(text)
            ctl.check_config(str(tmp))     # raises: the old config stays
            os.replace(tmp, self.path)
        if bird_up:
            failpoints.reached("renderer-before-configure")   # the new file is in place
            ctl.configure(self.ctl, str(self.path))   # raises: retried next pass
            failpoints.reached("renderer-after-configure")
            self._configured = text
            log.info("BIRD configured: %d peer(s), %d block(s)", len(model.peers),
                     len(model.blocks))
        return True

    def report(self) -> None:
        """Write BIRD's view of the sessions to etcd if it changed (with the
        time it was written), and keep the report's lease alive."""
        if os.path.exists(self.ctl):
            found = ctl.sessions(self.ctl)
            self._established = count_sessions(found, self._established)
            sessions = [s.__dict__ for s in found]
            self.status.publish({"node": self.name, "sessions": sessions},
                                extra={"reported_at": time.time()})
        self.status.keepalive()

    def run(self, stop: threading.Event) -> None:
        # Only records the view is made of wake it (not workloads, handles,
        # affinities or reports): most of what an add elsewhere writes.
        WatchLoop(self.store, keys.PREFIX, self.sync, log=log, resync=RESYNC, poll=POLL,
                  settle=0.05, tick=self.report, tick_every=REPORT_EVERY,
                  relevant=lambda response: keys.touches(response, self.view.relevant)
                  ).run(stop)
