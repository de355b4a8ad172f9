"""How far this node's policy agent has got, for adds that wait on it.

An add returns only once the node's policy agent has programmed etcd as of
the revision that activated the endpoint (the agent records it in its
progress key, ``keys.policy_applied``). One watch of that key serves every
waiting add: waiters sleep on a condition that the watch wakes, instead of
each polling etcd. Should the watch be missing (it could not be made, or it
ended: it is rebuilt by the next wait), a waiter re-reads the key with a
back-off doubling from 50 ms to 1 s; with the watch it still re-reads once a
second, so a lost event costs at most that.

A wait reads the key once first (the agent may have written it before the
watch existed), unless the caller took the watch (``watching``) before it
committed its revision and that watch still runs: then every write after the
commit reaches the watch, and the read would only add an etcd round trip to
the add.
"""

from __future__ import annotations

import logging
import threading
import time

from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store
from calicopy.errors import CalicoError
from calicopy.model.policy import applied_from_json
from calicopy.model.record import BadRecord, decode

log = logging.getLogger(__name__)

FIRST_PAUSE, MAX_PAUSE = 0.05, 1.0


class PolicyProgress:
    def __init__(self, store: Store, node: str):
        self.store, self.key = store, keys.policy_applied(node)
        self._cond = threading.Condition()
        self._applied = 0
        self._watch = None
        self._watch_lock = threading.Lock()     # one thread (re)builds the watch

    def watching(self):
        """The watch as of now (made if missing; None if it cannot be): given
        to ``wait`` by a caller that took it before committing its revision."""
        self._ensure_watch()
        return self._watch

    def wait(self, revision: int, timeout: float, watch=None) -> bool:
        """Whether the agent reached ``revision`` within ``timeout`` seconds
        (``watch``: what ``watching`` gave before ``revision`` was committed)."""
        deadline = time.monotonic() + timeout
        self._ensure_watch()
        if watch is None or watch is not self._watch:
            self._read()        # it may be there already: the watch sees only what follows
        pause = FIRST_PAUSE
        with self._cond:
            while self._applied < revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                watched = self._watch is not None
                woken = self._cond.wait(min(left, MAX_PAUSE if watched else pause))
                if not woken:       # no news: look ourselves (outside the lock)
                    pause = min(pause * 2, MAX_PAUSE)
                    self._cond.release()
                    try:
                        self._ensure_watch()
                        self._read()
                    finally:
                        self._cond.acquire()
            return True

    def _ensure_watch(self) -> None:
        with self._watch_lock:
            if self._watch is not None:
                return
            try:
                self._watch = self.store.watch(self.key, self._on_event)
            except CalicoError as exc:       # waiters fall back to reading
                log.warning("cannot watch %s (%s); polling it instead", self.key, exc)

    def _read(self) -> None:
        try:
            kv = self.store.get(self.key)
        except CalicoError as exc:
            log.warning("cannot read %s: %s", self.key, exc)
            return
        if kv is not None:
            self._learn(kv)

    def _learn(self, kv) -> None:
        try:
            revision = decode(kv, applied_from_json)
        except BadRecord:
            return
        with self._cond:
            if revision > self._applied:
                self._applied = revision
                self._cond.notify_all()

    def _on_event(self, response) -> None:
        events = getattr(response, "events", None)
        if events is None:          # the watch is over: the next wait rebuilds it
            with self._watch_lock:
                self._watch = None
            return
        for event in events:
            value = getattr(event, "value", b"")
            if value:           # (a delete has none)
                self._learn(KV(self.key, value.decode(), event.mod_revision))

    def close(self) -> None:
        with self._watch_lock:
            if self._watch is not None:
                self.store.cancel_watch(self._watch)
                self._watch = None
