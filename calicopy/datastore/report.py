"""A node's report about itself in etcd (its BGP sessions, its policy progress).

A report is one key under the node's own prefix, written under a lease, so
that it vanishes within ``ttl`` seconds of the node's death; and written only
when its value changes. The lease is kept alive by keep-alives, which do not
touch etcd's history, so an idle node adds nothing to it (and nothing for
auto-compaction to catch up with). If the lease expired all the same (etcd was
out of reach for longer than ``ttl``), the next keep-alive grants a new one
and writes the report again.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from calicopy.datastore.store import KV, ContentionError, LeaseExpired, Store, Txn

log = logging.getLogger(__name__)


class LeasedReport:
    """The report at ``key``, written by ``publish`` and kept alive by
    ``keepalive`` (call it at least every ``ttl / 3`` seconds)."""

    def __init__(self, store: Store, key: str, ttl: int,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.key, self.ttl, self._clock = store, key, ttl, clock
        self._lease = 0
        self._kv: KV | None = None          # as we last wrote it
        self._value: Any = None             # what we last wrote (None: nothing yet)
        self._extra: dict = {}
        self._refreshed = 0.0

    @property
    def value(self) -> Any:
        """What the report says, as last written (None before the first write)."""
        return self._value

    def publish(self, value: Any, extra: dict | None = None) -> bool:
        """Make the report say ``value`` (a dict; ``extra`` fields are written
        with it but left out of the comparison, e.g. a time stamp). Writes
        only when ``value`` differs from what was last written; says whether
        it wrote."""
        if value == self._value and self._kv is not None:
            return False
        self._write(value, extra or {})
        return True

    def keepalive(self) -> None:
        """Refresh the lease when a third of its time has passed; if it had
        expired, write the report again under a new one."""
        if not self._lease or self._clock() - self._refreshed < self.ttl / 3:
            return
        if self.store.refresh_lease(self._lease):
            self._refreshed = self._clock()
            return
        log.warning("the lease of %s had expired: writing it again", self.key)
        self._lease, self._kv = 0, None
        if self._value is not None:
            self._write(self._value, self._extra)

    def _write(self, value: Any, extra: dict) -> None:
        for _ in range(3):      # the cached revision may be stale (another writer, a restart)
            if not self._lease:
                self._lease, self._kv = self.store.grant_lease(self.ttl), None
                self._refreshed = self._clock()
            txn = Txn().put(self.key, self._kv, {**value, **extra}, lease=self._lease)
            try:
                revision = self.store.commit(txn)
            except LeaseExpired:        # between two keep-alives: a new one, and again
                self._lease = 0
                continue
            if revision:
                self._kv = KV(self.key, txn.puts[self.key], revision)
                self._value, self._extra = value, extra
                return
            self._kv = self.store.get(self.key)
        raise ContentionError(f"writing {self.key}", 3)
