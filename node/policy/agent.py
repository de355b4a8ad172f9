"""The policy agent's loop: etcd snapshot -> desired dataplane -> apply the difference.

Every change under /calico/v1/ (an etcd watch; nodes' own status reports
excluded) wakes it; it also resyncs fully on start and every RESYNC seconds
(rewriting every chain, which repairs anything edited by hand). After each
successful pass it records the etcd revision its dataplane reflects, which
the endpoint service waits for before an add returns.
"""

from __future__ import annotations

import logging
import threading
import time

from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store, Txn
from calicopy.errors import CalicoError, Unavailable
from node.policy import dataplane, ipsets
from node.policy.iptables import Tables
from services.policy.model import Snapshot

log = logging.getLogger("calico-policy-agent")

RESYNC = 60.0


class Agent:
    def __init__(self, store: Store, node: str, backend: str):
        self.store, self.node, self.backend = store, node, backend
        self.tables = {v: Tables(v, backend) for v in (4, 6)}
        self.changed = threading.Event()
        self._sets: dict[str, set[str]] | None = None    # what we last wrote
        self._applied_kv: KV | None = None
        self.applied_revision = 0

    def _on_event(self, response) -> None:
        if keys.changes_configuration(response):
            self.changed.set()

    def hooks_in_place(self) -> bool:
        """Whether the built-in chains still jump to ours (someone may have
        flushed them); cheap enough to ask before every pass."""
        return all(self.tables[v].hooked(table) for v in (4, 6) for table in
                   (("filter", "nat") if v == 4 else ("filter",)) if self.tables[v].written)

    def sync(self, full: bool = False) -> dict:
        revision, kvs = self.store.snapshot(keys.PREFIX)
        snapshot = Snapshot.from_kvs(revision, kvs)
        for name, why in snapshot.invalid_profiles.items():
            log.error("profile %s ignored (its members fail closed): %s", name, why)
        desired = dataplane.compute(snapshot, self.node)
        have = ipsets.current() if full or self._sets is None else self._sets
        self._sets = None                 # unknown until this pass succeeds
        stats = {"sets": ipsets.update(desired.ipsets, have), "chains": 0}
        for version, tables in desired.tables.items():
            for table, chains in tables.items():
                stats["chains"] += self.tables[version].apply(table, chains, full=full)
        stats["stale_sets"] = ipsets.remove_stale(desired.ipsets, have)
        self._sets = {name: set(s.members) for name, s in desired.ipsets.items()}
        self._record(revision)
        return stats

    def _record(self, revision: int) -> None:
        """Say that the dataplane reflects etcd as of ``revision``."""
        if revision <= self.applied_revision:
            return
        key = keys.policy_applied(self.node)
        for _ in range(3):
            txn = Txn().put(key, self._applied_kv, {"revision": revision})
            committed = self.store.commit(txn)
            if committed:
                self._applied_kv = KV(key, txn.puts[key], committed)
                self.applied_revision = revision
                return
            self._applied_kv = self.store.get(key)

    def run(self, stop: threading.Event) -> None:
        watch = None
        next_full = 0.0
        while not stop.is_set():
            try:
                if watch is None:
                    watch = self.store.watch(keys.PREFIX, self._on_event)
                self.changed.clear()
                full = time.monotonic() >= next_full or not self.hooks_in_place()
                stats = self.sync(full=full)
                if full:
                    next_full = time.monotonic() + RESYNC
                if any(stats.values()):
                    log.info("dataplane updated%s: %s", " (full resync)" if full else "", stats)
            except Unavailable as exc:
                log.warning("%s", exc)
                if watch is not None:
                    self.store.cancel_watch(watch)
                    watch = None
                stop.wait(1)
                continue
            except Exception as exc:     # keep enforcing what is there; try again
                log.error("%s", exc, exc_info=not isinstance(exc, CalicoError))
                next_full = 0.0          # re-read the kernel before trusting our cache
                stop.wait(1)
                continue
            self.changed.wait(min(5.0, max(0.1, next_full - time.monotonic())))
        if watch is not None:
            self.store.cancel_watch(watch)
