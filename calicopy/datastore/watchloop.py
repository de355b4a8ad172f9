"""One loop for every process that keeps something in step with etcd.

The loop watches a prefix and calls its owner's ``sync(full, events)``:

- with ``full=True`` on start, after any end of the watch (which is then
  rebuilt at once, so nothing that happened meanwhile is missed: the owner
  re-reads everything) and every ``resync`` seconds. The store reports every
  end (compaction, etcd's own cancel, a failed or closed stream: see
  calicopy.datastore.etcd_watch), and a watch etcd refuses is an error, not
  a watch that never fires;
- with ``full=False`` when the watch delivered events that change
  configuration (nodes' own reports are left out, see
  ``keys.changes_configuration``), and every ``poll`` seconds regardless, so a
  lost event costs at most ``poll``.

A sync returns what it wants reported (e.g. the revision its work reflects),
and ``report(result)`` runs after each successful sync: how an owner tells
others about its progress. ``tick()``, if given, runs every ``tick_every``
seconds whatever happened (e.g. a status report). ``resync``, ``poll`` and
``tick_every`` may be functions returning seconds, for an owner that needs
its passes often only while it has something to do.

Failures never end the loop: an unreachable datastore drops the watch (it is
rebuilt, with a full sync) and is retried after a pause; anything else is
logged and the next pass is a full one, so the owner re-reads the world
before trusting its caches again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from calicopy import metrics
from calicopy.datastore import keys
from calicopy.datastore.store import Store
from calicopy.errors import CalicoError, Unavailable

RETRY_PAUSE = 1.0


class WatchLoop:
    def __init__(self, store: Store, prefix: str, sync: Callable[[bool, list], Any], *,
                 log: logging.Logger, resync: float | Callable[[], float] = 60.0,
                 poll: float | Callable[[], float] = 5.0,
                 settle: float = 0.0, report: Callable[[Any], None] | None = None,
                 tick: Callable[[], None] | None = None,
                 tick_every: float | Callable[[], float] = 0.0,
                 relevant: Callable[[Any], bool] = keys.changes_configuration):
        self.store, self.prefix, self._sync = store, prefix, sync
        self.log, self.resync, self.poll, self.settle = log, resync, poll, settle
        self._report, self._tick, self.tick_every = report, tick, tick_every
        self._relevant = relevant
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._events: list = []
        self._watch = None
        self._watch_ended = False
        self._last_problem = ""

    # The watch ---------------------------------------------------------------

    def _on_event(self, response) -> None:
        events = getattr(response, "events", None)
        with self._lock:
            if events is None:              # this watch is over, whatever the cause
                self._watch_ended = True
                metrics.WATCH_RESTARTS.inc()
                self.log.info("rebuilding the watch of %s: %s", self.prefix, response)
            elif self._relevant(response):
                self._events.extend(events)
            else:
                return
        self.changed.set()

    def watch_prefix(self, prefix: str) -> None:
        """Watch ``prefix`` from now on: the watch is rebuilt before the next
        pass, which is then a full one (nothing between is missed)."""
        with self._lock:
            if prefix == self.prefix:
                return
            self.prefix, self._watch_ended = prefix, True
        self.changed.set()

    def _ensure_watch(self) -> bool:
        """Whether the watch had to be (re)built, which calls for a full sync."""
        with self._lock:
            ended, self._watch_ended = self._watch_ended, False
        if ended and self._watch is not None:
            self.store.cancel_watch(self._watch)
            self._watch = None
        if self._watch is not None:
            return False
        self._watch = self.store.watch(self.prefix, self._on_event)
        return True

    def _drop_watch(self) -> None:
        if self._watch is not None:
            self.store.cancel_watch(self._watch)
            self._watch = None

    def _take_events(self) -> list:
        with self._lock:
            events, self._events = self._events, []
        return events

    # The loop ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        next_full = 0.0
        next_tick = 0.0
        # A stop ends the wait for changes at once (a quiet loop may wait for
        # its whole poll interval, 10 s for some): the node stops promptly.
        threading.Thread(target=lambda: (stop.wait(), self.changed.set()), daemon=True,
                         name="watchloop-stop").start()
        while not stop.is_set():
            try:
                rebuilt = self._ensure_watch()
                self.changed.clear()
                events = self._take_events()
                full = rebuilt or time.monotonic() >= next_full
                with metrics.SYNC_SECONDS.time(kind="full" if full else "update"):
                    result = self._sync(full, events)
                if full:
                    next_full = time.monotonic() + _seconds(self.resync)
                if self._report is not None:
                    self._report(result)
                if self._tick is not None and time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + _seconds(self.tick_every)
                self._problem("")
            except Unavailable as exc:
                self._problem(str(exc))
                self._drop_watch()
                stop.wait(RETRY_PAUSE)
                continue
            except Exception as exc:      # keep what is there; look again from scratch
                self.log.error("%s", exc, exc_info=not isinstance(exc, CalicoError))
                next_full = 0.0
                stop.wait(RETRY_PAUSE)
                continue
            wait = min(_seconds(self.poll), max(0.05, next_full - time.monotonic()))
            if self._tick is not None:
                next_tick = min(next_tick, time.monotonic() + _seconds(self.tick_every))
                wait = min(wait, max(0.05, next_tick - time.monotonic()))
            self.changed.wait(wait)
            if self.settle and not stop.is_set():
                time.sleep(self.settle)     # let a burst of changes land first
        self._drop_watch()

    def _problem(self, text: str) -> None:
        """Log a datastore problem once, not at every retry."""
        if text and text != self._last_problem:
            self.log.warning("%s", text)
        self._last_problem = text


def _seconds(value: float | Callable[[], float]) -> float:
    return value() if callable(value) else value
