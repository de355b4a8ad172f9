"""IPAM's garbage collector: releases allocations whose owner is gone.

The IPAM service runs it every ``--gc-interval`` seconds, in the spirit of
Calico's. A pass reads every allocation and asks ``services.ipam.owners`` who
owns it. One whose owner is gone is a candidate, noted with when it was first
seen so; a candidate still gone on a later pass, at least ``--gc-grace``
seconds after that, is released after a final re-check: the owner's records
are read again just before the commit, and the release transaction requires
the block unchanged and, where the rule has one, the owner's key still
absent. An owner that appears at any moment before the commit keeps its
address.

Any number of replicas may collect at once, with no lock: each remembers its
own candidates (a replica needs two passes of its own before it releases),
and every release is a compare-and-swap that another replica's finds done.

Allocations the rules cannot attribute (a calico-ipam handle on a registered
node: which container holds it, IPAM cannot tell) are reported in the log,
once per handle, and never released. IPAM used on its own (handles that name
no node) is never looked at.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from calicopy import metrics
from calicopy.datastore import keys
from calicopy.errors import CalicoError
from calicopy.model.ipam import Allocation, Block
from services.ipam import owners
from services.ipam.allocator import Ipam

log = logging.getLogger("calico-ipam-gc")

DEFAULT_INTERVAL = 60.0
DEFAULT_GRACE = 300.0


@dataclasses.dataclass
class PassReport:
    """What one pass found and did."""

    checked: int
    candidates: list[str]       # addresses whose owner is gone
    released: list[str]
    unattributed: list[str]     # handles of a live node nobody can be named for


class GarbageCollector:
    def __init__(self, ipam: Ipam, grace: float = DEFAULT_GRACE,
                 clock: Callable[[], float] = time.monotonic):
        self.ipam, self.store = ipam, ipam.store
        self.grace, self.clock = grace, clock
        self._first_seen: dict[tuple[str, str], float] = {}    # (ip, handle) -> when
        self._reported: set[str] = set()

    def run(self, stop: threading.Event, interval: float) -> None:
        """A pass every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(interval):
            try:
                done = self.run_pass()
                metrics.IPAM_GC_PASSES.inc(result="ok")
                metrics.IPAM_GC_RELEASES.inc(len(done.released))
            except CalicoError as exc:          # etcd away: next time
                metrics.IPAM_GC_PASSES.inc(result="error")
                log.warning("garbage collection failed: %s", exc)
            except Exception:
                metrics.IPAM_GC_PASSES.inc(result="error")
                log.exception("garbage collection failed")

    def run_pass(self) -> PassReport:
        now = self.clock()
        view = owners.View.read(self.store)
        found: dict[tuple[str, str], tuple[Allocation, owners.Owner]] = {}
        unattributed, checked = set(), 0
        for kv in self.store.list(keys.blocks_prefix()):
            block = Block.from_json(kv.json())
            for ordinal, alloc in sorted(block.allocations.items()):
                checked += 1
                ip = block.ip(ordinal)
                owner = view.owner(ip, alloc)
                if owner is None:
                    continue
                if owner.rule == "unattributed":
                    unattributed.add(alloc.handle_id)
                elif owner.gone:
                    found[(ip, alloc.handle_id)] = (alloc, owner)
        seen_before = self._first_seen
        self._first_seen = {key: seen_before.get(key, now) for key in found}
        released = []
        for (ip, handle_id), (alloc, owner) in found.items():
            first = seen_before.get((ip, handle_id))
            if first is None or now - first < self.grace:
                continue
            if self.ipam.release_orphan(ip, handle_id, lambda: self._still_gone(ip, alloc,
                                                                                 owner.node),
                                        owner.proof):
                log.info("released %s (handle %s): its owner, %s, is gone", ip, handle_id,
                         owner.describe)
                released.append(ip)
            self._first_seen.pop((ip, handle_id), None)
        for handle_id in sorted(unattributed - self._reported):
            log.info("%s holds addresses IPAM cannot attribute to an endpoint (its node is "
                     "registered): not released", handle_id)
        self._reported = unattributed
        log.info("garbage collection: %d allocation(s) without an owner, %d released "
                 "(%d checked)", len(found), len(released), checked)
        return PassReport(checked, [ip for ip, _ in found], released, sorted(unattributed))

    def _still_gone(self, ip: str, alloc: Allocation, node: str) -> bool:
        """The final re-check: the node's records, read again now."""
        owner = owners.View.read(self.store, node=node).owner(ip, alloc)
        return owner is not None and owner.gone
