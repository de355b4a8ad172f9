"""The BIRD config renderer: keeps one node's BIRD configuration in step with
etcd, and reports the node's BGP sessions back.

Run by the shared watch loop (calicopy.datastore.watchloop): it re-renders on
every change under /calico/v1/ and every few seconds regardless (so a peer
that becomes directly connected, or stops being so, is re-rendered). A new
configuration is written to a temporary file, checked with `bird -p`, moved
into place atomically, and BIRD is told to `configure` only when the text
changed. A malformed node, peer, pool or block record is left out, as if
absent, and reported once (calicopy.quarantine). Every couple of seconds it
reads the sessions BIRD reports and writes them to etcd when they changed,
under a lease that keep-alives hold (calicopy.datastore.report): the report
vanishes if the node stops, and an idle node adds nothing to etcd's history.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from calicopy import failpoints, metrics, underlay
from calicopy.datastore import keys
from calicopy.datastore.report import LeasedReport
from calicopy.datastore.store import Store
from calicopy.datastore.watchloop import WatchLoop
from calicopy.model import bgp, ipam
from calicopy.model.record import BadRecord, decode, decode_all
from calicopy.quarantine import Quarantine
from node.bird import conf, ctl

log = logging.getLogger("calico-bird-renderer")

RESYNC = 5.0
REPORT_EVERY = 2.0
REPORT_TTL = 10


def current_model(store: Store, name: str, bad: dict[str, str] | None = None,
                  connected=underlay.on_link) -> conf.BirdModel | None:
    """The BIRD model for node ``name`` from etcd (and, for which peers are
    directly connected, the host's routes); None until it is registered (or
    while its own record is malformed). Malformed records are left out, as if
    absent, and listed in ``bad`` (key -> what is wrong) when given."""
    bad = {} if bad is None else bad
    kv = store.get(keys.node(name))
    if kv is None:
        return None
    try:
        node = decode(kv, bgp.Node.from_json)
    except BadRecord as exc:
        bad[exc.key] = exc.why
        return None
    # The block records, not the affinities, say who owns a block: a stale
    # affinity must never make two hosts advertise the same block.
    blocks = [str(block.cidr) for block in decode_all(store.list(keys.blocks_prefix()),
                                                      ipam.Block.from_json, bad)
              if block.host == name]
    pools = [str(pool.cidr) for pool in ipam.read_pools(store, bad=bad)]
    return conf.build_model(node, bgp.read_nodes(store, bad), bgp.read_config(store, bad),
                            bgp.read_peers(store, bad=bad),
                            bgp.read_peers(store, node=name, bad=bad), pools, blocks, connected)


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
                 quarantine: Quarantine | None = None):
        self.store, self.name, self.path, self.ctl = store, name, config_path, ctl
        self.quarantine = quarantine or Quarantine(log)
        self._configured: str | None = None    # the text BIRD last accepted
        self.status = LeasedReport(store, keys.bgp_status(name), REPORT_TTL)
        self._established: set[tuple[str, int]] = set()    # (peer, IP version) up last time

    def sync(self, full: bool = False, events=()) -> bool:
        """Render and, if the text differs from what BIRD last accepted,
        install and reload. Says whether it did."""
        bad: dict[str, str] = {}
        model = current_model(self.store, self.name, bad)
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
        WatchLoop(self.store, keys.PREFIX, self.sync, log=log, resync=RESYNC, poll=RESYNC,
                  settle=0.05, tick=self.report, tick_every=REPORT_EVERY).run(stop)
