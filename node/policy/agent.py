"""The policy agent: etcd snapshot -> desired dataplane -> apply the difference.

Run by the shared watch loop (calicopy.datastore.watchloop): every change
under /calico/v1/ (nodes' own status reports excluded) wakes it; it resyncs
fully on start, after any end of its watch and every RESYNC seconds
(rewriting every chain, which repairs anything edited by hand), and whenever
the built-in chains no longer jump to ours. A malformed record (an endpoint
with a bogus address, a profile with a bad rule) is left out, as if absent,
and reported once (calicopy.quarantine): it never stops the pass for
everyone else.

Its progress is the etcd revision its dataplane reflects, which the endpoint
service waits for before an add returns (its endpoint record's revision). It
is written after a successful pass only when one of this node's endpoint
records changed since the last write: that is all anyone waits for, so
changes elsewhere, and an idle node, cost etcd no writes. It is written under
a lease that keep-alives hold (calicopy.datastore.report): it disappears
within PROGRESS_TTL seconds of the agent's end.
"""

from __future__ import annotations

import logging
import threading

from calicopy import failpoints
from calicopy.datastore import keys
from calicopy.datastore.report import LeasedReport
from calicopy.datastore.store import Store
from calicopy.datastore.watchloop import WatchLoop
from calicopy.model.policy import Snapshot
from calicopy.quarantine import Quarantine
from node.policy import commands, dataplane
from node.policy.ipsets import IpSets
from node.policy.iptables import Tables

log = logging.getLogger("calico-policy-agent")

RESYNC = 60.0
PROGRESS_TTL = 30


class Agent:
    """``run`` runs the iptables and ipset tools: commands.run, or in tests a
    stand-in that holds the kernel's state."""

    def __init__(self, store: Store, node: str, backend: str, run=commands.run,
                 quarantine: Quarantine | None = None):
        self.store, self.node, self.backend = store, node, backend
        # Malformed records: left out of the dataplane (fail closed), reported.
        self.quarantine = quarantine or Quarantine(log)
        self.tables = {v: Tables(v, backend, run) for v in (4, 6)}
        self.ipsets = IpSets(run)
        self._sets: dict[str, set[str]] | None = None    # what we last wrote
        self.progress = LeasedReport(store, keys.policy_applied(node), PROGRESS_TTL)
        self._local_changed = 0          # newest revision of this node's endpoint records
        self._programmed: set[str] = set()   # this node's endpoints, as last programmed

    def hooks_in_place(self) -> bool:
        """Whether the built-in chains still jump to ours (someone may have
        flushed them); cheap enough to ask before every pass."""
        return all(self.tables[v].hooked(table) for v in (4, 6)
                   for table in self.tables[v].written)

    def step(self, full: bool, events=()) -> int:
        """One pass of the watch loop; full also when someone flushed our hooks.
        Returns the revision the dataplane now reflects."""
        full = full or not self.hooks_in_place()
        revision, stats = self.sync(full=full)
        if any(stats.values()):
            log.info("dataplane updated%s: %s", " (full resync)" if full else "", stats)
        return revision

    def sync(self, full: bool = False) -> tuple[int, dict]:
        """Make the dataplane match etcd now; returns the revision it reflects
        and how many sets and chains changed."""
        revision, kvs = self.store.snapshot(keys.PREFIX)
        mine = keys.node_endpoints_prefix(self.node)
        self._local_changed = max([kv.mod_revision for kv in kvs if kv.key.startswith(mine)],
                                  default=0)
        snapshot = Snapshot.from_kvs(revision, kvs)
        self.quarantine.update(keys.PREFIX, snapshot.bad)
        desired = dataplane.compute(snapshot, self.node)
        failpoints.reached("policy-before-restore")
        have = self.ipsets.current() if full or self._sets is None else self._sets
        self._sets = None                 # unknown until this pass succeeds
        stats = {"sets": self.ipsets.update(desired.ipsets, have), "chains": 0}
        for version, tables in desired.tables.items():
            for table, chains in tables.items():
                stats["chains"] += self.tables[version].apply(table, chains, full=full)
        stats["stale_sets"] = self.ipsets.remove_stale(desired.ipsets, have)
        self._sets = {name: set(s.members) for name, s in desired.ipsets.items()}
        failpoints.reached("policy-after-restore")      # programmed, progress not recorded
        # Named in the log, so that a request can be followed from the endpoint
        # service's "added endpoint <id>" to here (README: Following a request).
        mine = {ep.endpoint_id for ep in snapshot.endpoints if ep.node == self.node}
        if mine - self._programmed:
            log.info("programmed endpoint(s) %s (revision %d)",
                     ", ".join(sorted(mine - self._programmed)), revision)
        self._programmed = mine
        return revision, stats

    @property
    def applied_revision(self) -> int:
        """The revision last recorded as programmed (0: none yet)."""
        return (self.progress.value or {}).get("revision", 0)

    def _record(self, revision: int) -> None:
        """Say that the dataplane reflects etcd as of ``revision``, if one of
        this node's endpoints changed since we last said so."""
        if self._local_changed > self.applied_revision:
            self.progress.publish({"revision": revision})

    def run(self, stop: threading.Event) -> None:
        WatchLoop(self.store, keys.PREFIX, self.step, log=log, resync=RESYNC, poll=5.0,
                  report=self._record, tick=self.progress.keepalive,
                  tick_every=PROGRESS_TTL / 6).run(stop)
