"""A node process saying it can serve: a file in the node's state folder.

The Docker plugin and the CALICO_IP proxy answer Docker at once, but can do
their work only once they reach the node's endpoint service. Each makes a
first call to it through the very client it serves with (so its channel is
connected), retrying until it succeeds, then writes ``ready-<process>``
(``NodePaths.ready``); `calicoctl node` returns only once every part it
started is ready. The file goes when the process stops (and a new start
removes a stale one first), so it never speaks for a process that is gone.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from calicopy.errors import CalicoError

RETRY_PAUSE = 0.2


class Readiness:
    def __init__(self, path: Path, log: logging.Logger):
        self.path, self.log = path, log
        path.unlink(missing_ok=True)        # a previous run's

    def announce_when(self, first_call: Callable[[], object], stop: threading.Event) -> None:
        """In the background: call ``first_call`` until it succeeds, then write the file."""
        def run():
            while not stop.is_set():
                try:
                    first_call()
                except CalicoError as exc:
                    self.log.info("not ready yet: %s", exc)
                    stop.wait(RETRY_PAUSE)
                    continue
                self.path.write_text("ready\n")
                self.log.info("ready: the endpoint service answers")
                return
        threading.Thread(target=run, name="readiness", daemon=True).start()

    def withdraw(self) -> None:
        self.path.unlink(missing_ok=True)
