"""Keeps Calico's containers in step with the engine, whatever went past the proxy.

Starts the engine made itself (restart policies), containers removed by
``--rm`` or through the engine's own socket, and anything that happened while
the proxy was down: the engine's events say what happens, and a full
reconciliation runs before following them (from the time it began, so that
nothing falls in between), after every reconnection, and every ``resync``
seconds.
"""

from __future__ import annotations

import logging
import threading
import time

from calicopy.docker_engine import Engine
from calicopy.errors import CalicoError
from node.docker_proxy.calico_ip import ContainerNetworking

log = logging.getLogger("docker-proxy")

FILTERS = {"type": ["container"], "event": ["start", "destroy"]}
BACKOFF_MAX = 5.0


class Watcher:
    def __init__(self, engine: Engine, networking: ContainerNetworking, resync: float):
        self.engine = engine
        self.networking = networking
        self.resync = resync
        self._last_problem = ""

    def start(self, stop: threading.Event) -> None:
        for target, name in ((self.follow, "docker-events"), (self.periodic, "docker-resync")):
            threading.Thread(target=target, args=(stop,), name=name, daemon=True).start()

    def reconcile(self) -> None:
        counts = self.networking.reconcile()
        if any(counts.values()):
            log.info("reconciled with the engine: %s", counts)

    def follow(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            since = int(time.time()) - 1
            started = time.monotonic()
            try:
                self.reconcile()
                # The SDK reads events with no timeout (they may be minutes
                # apart); a stream that breaks is Unavailable, said once.
                with self.engine.calls("Docker refused to stream events") as docker:
                    for event in docker.events(filters=FILTERS, since=since, decode=True):
                        backoff = 0.5
                        self._handle(event)
                self._problem("")
            except CalicoError as exc:
                self._problem(str(exc))
            # The stream ended (an engine restart closes it) or failed: wait
            # before the next reconcile unless it had been up a good while.
            if time.monotonic() - started < BACKOFF_MAX:
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def periodic(self, stop: threading.Event) -> None:
        while not stop.wait(self.resync):
            try:
                self.reconcile()
            except CalicoError as exc:
                self._problem(str(exc))

    def _handle(self, event: dict) -> None:
        action = event.get("Action") or event.get("status")
        cid = event.get("id") or (event.get("Actor") or {}).get("ID", "")
        try:
            if action == "start":
                self.networking.ensure(cid, stop_on_failure=False)
            elif action == "destroy":
                self.networking.release(cid)
        except CalicoError as exc:
            log.error("handling the %s of container %s failed: %s", action, cid[:12], exc)
        except Exception:                           # one bad event must not stop the watch
            log.exception("handling the %s of container %s failed", action, cid[:12])

    def _problem(self, text: str) -> None:
        """Log a problem once, not at every retry."""
        if text and text != self._last_problem:
            log.warning("watching the engine: %s (retrying)", text)
        self._last_problem = text
