"""A watch of one etcd prefix that reports every way it can end.

pyetcd's watcher never calls back when etcd cancels a watch without events
(a watch refused at creation, a cancel of etcd's own) and reports compaction
only when it comes with the cancel, so a watch could die quietly and its
owner would learn of changes only by polling. This one runs its own Watch
stream over etcd's gRPC API (etcdrpc), one stream per watch, and keeps two
promises:

- ``PrefixWatch(...)`` returns only once etcd has created the watch; a
  refusal (permission denied, compaction at the start revision, a stream
  error) raises ``WatchFailed`` (or the stream's grpc.RpcError) instead of
  handing back a watch that is already dead;
- after that, ``on_event`` gets each response with events (objects with
  ``events``, each with ``key``/``value`` as pyetcd's), and exactly once,
  whatever ends the watch (compaction, etcd's cancel, the stream failing or
  closing), a ``WatchEnded`` saying why, which has no ``events``. Only
  ``cancel()`` ends it silently.

``change(event)`` reads one event as (key, new value or None when deleted,
revision): how owners that keep a model current apply them.
"""

from __future__ import annotations

import logging
import queue
import threading

import grpc
import grpc._common
from pyetcd import etcdrpc
from pyetcd import events as etcd_events

log = logging.getLogger(__name__)

# gRPC's blocking waits (a stream's next response, a streamed request) wake
# every MAXIMUM_WAIT_TIMEOUT (0.1 s) so that the main thread's signal
# handlers run promptly. Every watch reader is such a wait for the whole life
# of its process: ten wake-ups a second per watch were a third of an idle
# node's CPU (bench/footprint.py). Our readers are never the main thread, and
# a main thread blocked in a call handles a signal within a second.
GRPC_WAIT = 1.0
if getattr(grpc._common, "MAXIMUM_WAIT_TIMEOUT", None) is not None:
    grpc._common.MAXIMUM_WAIT_TIMEOUT = max(grpc._common.MAXIMUM_WAIT_TIMEOUT, GRPC_WAIT)


class WatchFailed(Exception):
    """etcd refused to create the watch; ``reason`` is its cancel reason."""

    def __init__(self, reason: str, compact_revision: int = 0):
        super().__init__(reason)
        self.reason, self.compact_revision = reason, compact_revision


class WatchEnded(Exception):
    """Passed to a watch's callback once, when the watch is over."""

    events = None

    def __init__(self, reason: str):
        super().__init__(f"the etcd watch ended: {reason}")
        self.reason = reason


def change(event) -> tuple[str, str | None, int]:
    """(key, value, revision) of one event; the value is None for a delete."""
    value = None if isinstance(event, etcd_events.DeleteEvent) else event.value.decode()
    return event.key.decode(), value, event.mod_revision


class WatchResponse:
    def __init__(self, header, events):
        self.header, self.events = header, events


def _prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


def _why(rs) -> str:
    if rs.compact_revision:
        return (f"etcd compacted its history past the watch's revision (compacted at "
                f"revision {rs.compact_revision})")
    return f"etcd cancelled it ({rs.cancel_reason or 'no reason given'})"


class PrefixWatch:
    def __init__(self, client, prefix: str, on_event, start_revision: int = 0,
                 timeout: float = 5.0):
        """``client`` is a connected pyetcd client (its channel and credentials)."""
        self.prefix, self._on_event = prefix, on_event
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=prefix.encode(), range_end=_prefix_end(prefix),
            start_revision=start_revision)))
        self._cancelled = False
        self._created = threading.Event()
        self._failure: BaseException | None = None
        self._call = etcdrpc.WatchStub(client.channel).Watch(
            self._request_iter(), credentials=client.call_credentials,
            metadata=client.metadata)
        threading.Thread(target=self._run, name=f"etcd watch {prefix}", daemon=True).start()
        if not self._created.wait(timeout):
            self.cancel()
            raise WatchFailed(f"etcd did not create the watch within {timeout:g}s")
        if self._failure is not None:
            raise self._failure

    def _request_iter(self):
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def cancel(self) -> None:
        """End the watch without calling back."""
        self._cancelled = True
        self._requests.put(None)
        self._call.cancel()

    def _run(self) -> None:
        reason = "etcd closed the watch stream"
        try:
            for rs in self._call:
                if not self._created.is_set():
                    if not rs.created or rs.canceled or rs.compact_revision:
                        self._failure = WatchFailed(_why(rs), rs.compact_revision)
                        return
                    self._created.set()
                    continue
                if rs.canceled or rs.compact_revision:
                    reason = _why(rs)
                    return
                if rs.events:
                    self._deliver(WatchResponse(
                        rs.header, [etcd_events.new_event(e) for e in rs.events]))
        except grpc.RpcError as exc:
            if not self._created.is_set():
                self._failure = exc
                return
            reason = f"the stream failed: {exc.code().name} {exc.details() or ''}".strip()
        finally:
            if not self._created.is_set():
                self._failure = self._failure or WatchFailed(reason)
                self._created.set()
                self._call.cancel()
            elif not self._cancelled:
                self._cancelled = True
                self._requests.put(None)
                self._call.cancel()
                self._deliver(WatchEnded(reason))

    def _deliver(self, response) -> None:
        if self._cancelled and not isinstance(response, WatchEnded):
            return
        try:
            self._on_event(response)
        except Exception:       # the owner's bug must not end the watch silently
            log.exception("watch callback for %s failed", self.prefix)
