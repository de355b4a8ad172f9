"""The policy agent: etcd's records -> the node's model -> the dataplane's
difference, one change at a time.

Run by the shared watch loop (calicopy.datastore.watchloop). A full pass (on
start, after any end of its watch, every RESYNC seconds, and whenever the
built-in chains no longer jump to ours) reads the cluster's records at one
revision into its model (node.policy.view), recomputes what the node wants
(node.policy.desired), rewrites every set that differs from the kernel's and
reads back and rewrites every chain (which repairs anything edited by hand)
unless the kernel's ruleset generation shows that only the agent's own
writes changed the rules since it last did (then the chains that differ from
what it wrote are written). Any other pass applies the
watch's events since the last pass to the model and writes only what they
change: a rule change rewrites that profile's chains; a local endpoint's
change its chains and the dispatch chains; an endpoint elsewhere joining a
profile one ipset member. Events at or before the revision of the last full
read are already in it and are skipped. A malformed record (an endpoint
with a bogus address, a profile with a bad rule) is left out, as if absent,
and reported once (calicopy.quarantine): it never stops the pass for
everyone else.

The hooks (the built-in chains' jumps to ours) are checked with `iptables -C`
only when someone else may have changed the rules: where the kernel has
nf_tables' ruleset generation (node.policy.generation), the agent knows the
generation its own writes led to, and an idle pass starts no process. With
the legacy backend every pass checks.

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
from calicopy.datastore.etcd_watch import change
from calicopy.datastore.report import LeasedReport
from calicopy.datastore.store import Store
from calicopy.datastore.watchloop import WatchLoop
from calicopy.quarantine import Quarantine
from node.policy import commands
from node.policy.desired import DesiredState
from node.policy.generation import RulesetGeneration
from node.policy.ipsets import IpSets
from node.policy.iptables import Tables
from node.policy.view import ClusterView, relevant

log = logging.getLogger("calico-policy-agent")

RESYNC = 60.0
PROGRESS_TTL = 30


class Agent:
    """``run`` runs the iptables and ipset tools: commands.run, or in tests a
    stand-in that holds the kernel's state; ``generation`` reads nf_tables'
    ruleset generation (None: unknown, check the hooks at every pass)."""

    def __init__(self, store: Store, node: str, backend: str, run=commands.run,
                 quarantine: Quarantine | None = None, generation=None):
        self.store, self.node, self.backend = store, node, backend
        # Malformed records: left out of the dataplane (fail closed), reported.
        self.quarantine = quarantine or Quarantine(log)
        self.tables = {v: Tables(v, backend, run) for v in (4, 6)}
        self.ipsets = IpSets(run)
        self.view = ClusterView(node)
        self.desired = DesiredState()
        self.revision = 0                # of the newest record the model holds
        self._read_at = 0                # the revision of the last full read
        self._loaded = False             # whether a full read happened
        self._set_names: set[str] | None = None    # our sets in the kernel (None: unknown)
        self.progress = LeasedReport(store, keys.policy_applied(node), PROGRESS_TTL)
        self._local_changed = 0          # newest revision of this node's endpoint records
        self._mine = keys.node_endpoints_prefix(node)
        self._generation = generation or (lambda: None)
        self._trusted: int | None = None     # a ruleset generation with our hooks in place
        self._programmed: set[str] = set()   # this node's endpoints, as last programmed

    def hooks_in_place(self) -> bool:
        """Whether the built-in chains still jump to ours (someone may have
        flushed them)."""
        return all(self.tables[v].hooked(table) for v in (4, 6)
                   for table in self.tables[v].written)

    def _hooks_ok(self) -> bool:
        """hooks_in_place, asked only when the ruleset changed since we last knew."""
        generation = self._generation()
        if generation is not None and generation == self._trusted:
            return True
        ok = self.hooks_in_place()
        self._trusted = generation if ok else None
        return ok

    def step(self, full: bool, events=()) -> int:
        """One pass of the watch loop; full also when someone flushed our hooks.
        Returns the revision the dataplane now reflects."""
        full = full or not self._hooks_ok()
        revision, stats = self.sync(full=full, events=events)
        if any(stats.values()):
            log.info("dataplane updated%s: %s", " (full resync)" if full else "", stats)
        return revision

    def sync(self, full: bool = False, events=()) -> tuple[int, dict]:
        """Make the dataplane match etcd: everything read afresh (``full``, or
        before the first full read), else the watch's ``events`` applied.
        Returns the revision it reflects and how many sets, set members and
        chains changed."""
        full = full or not self._loaded
        if full:
            self._load()
        else:
            self._apply(events)
        self.quarantine.update(keys.PREFIX, self.view.bad)
        failpoints.reached("policy-before-restore")
        generation = self._generation()
        # Only our own writes changed the rules since we last knew them whole:
        # what we wrote stands for the kernel, even in a full pass.
        untouched = generation is not None and generation == self._trusted
        restores = sum(t.restores for t in self.tables.values())
        stats = self._write(full, read_rules=full and not untouched)
        failpoints.reached("policy-after-restore")      # programmed, progress not recorded
        # Named in the log, so that a request can be followed from the endpoint
        # service's "added endpoint <id>" to here (README: Following a request).
        mine = {ep.endpoint_id for ep in self.view.local_endpoints.values()}
        if mine - self._programmed:
            log.info("programmed endpoint(s) %s (revision %d)",
                     ", ".join(sorted(mine - self._programmed)), self.revision)
        self._programmed = mine
        restores = sum(t.restores for t in self.tables.values()) - restores
        if generation is not None and (full or untouched) and \
                self._generation() == generation + restores:
            self._trusted = generation + restores       # only our own writes since
        return self.revision, stats

    def _load(self) -> None:
        revision, kvs = self.store.snapshot(keys.PREFIX)
        self.view.load([kv for kv in kvs if relevant(kv.key)])
        self.desired.rebuild(self.view)
        self.revision = self._read_at = revision
        self._loaded = True
        self._local_changed = max([kv.mod_revision for kv in kvs
                                   if kv.key.startswith(self._mine)], default=0)

    def _apply(self, events) -> None:
        for event in events:
            key, value, revision = change(event)
            if revision <= self._read_at:
                continue                # already in what we read (one commit's events
                                        # share its revision: compare with the read's)
            self.revision = max(self.revision, revision)
            if relevant(key):
                self.view.apply(key, value)
                if key.startswith(self._mine):
                    self._local_changed = revision
        self.desired.update(self.view, self.view.take_notes())

    def _write(self, full: bool, read_rules: bool) -> dict:
        """Write what is pending (when ``full``, everything that differs from
        the kernel's sets, and from its chains with ``read_rules``, else from
        what we wrote): sets, then chains, then the sets no rule uses any more."""
        desired = self.desired
        stats = {"sets": 0, "members": 0, "chains": 0, "stale_sets": 0}
        if full or self._set_names is None:
            have = self.ipsets.current()
            self._set_names = set(have)
            stats["sets"] = self.ipsets.update(desired.sets, have)
        else:
            whole = {n: desired.sets[n] for n in desired.pending_sets if n in desired.sets}
            stats["sets"] = self.ipsets.update(whole, {})
            stats["members"] = self.ipsets.change_members({
                name: (desired.sets[name].members, ips)
                for name, ips in desired.pending_members.items()
                if name in desired.sets and name not in whole})
        self._set_names |= set(desired.sets)
        desired.pending_sets.clear()
        desired.pending_members.clear()
        for version, tables in desired.tables.items():
            for table, chains in tables.items():
                only = desired.pending_chains.get((version, table), set())
                if full or only or not self.tables[version].written.get(table):
                    stats["chains"] += self.tables[version].apply(
                        table, chains, full=read_rules, only=None if full else only)
                desired.pending_chains.pop((version, table), None)
        stale = {n: None for n in self._set_names if n not in desired.sets}
        stats["stale_sets"] = self.ipsets.remove_stale(desired.sets, stale)
        self._set_names -= set(stale)
        return stats

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
        generation = RulesetGeneration() if self.backend == "nft" else None
        if generation is not None:
            self._generation = generation.read
        try:
            # Only records the agent reads wake it (not IPAM's blocks and
            # handles, nor reports): most of what an add elsewhere writes.
            WatchLoop(self.store, keys.PREFIX, self.step, log=log, resync=RESYNC, poll=5.0,
                      relevant=lambda response: keys.touches(response, relevant),
                      report=self._record, tick=self.progress.keepalive,
                      tick_every=PROGRESS_TTL / 6).run(stop)
        finally:
            if generation is not None:
                generation.close()
