"""The malformed records one process is skipping, and how it reports them.

Readers treat a record they cannot read as absent (calicopy.model.record)
and hand it here: each is logged once with its key and what is wrong, not
at every pass. A node's processes (policy agent, endpoint service, BIRD
renderer) also list theirs in a file of the node's state folder
(``NodePaths.quarantine``), which ``calicoctl status`` shows; the file is
rewritten atomically whenever the list changes, and holds
``{"process": <name>, "records": {<key>: <what is wrong>}}``.

``update(scope, bad)`` takes what a complete read of the keys under
``scope`` found malformed: a record under ``scope`` that is no longer in
``bad`` was fixed or deleted and leaves the list (logged too).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from calicopy import metrics
from calicopy.node_paths import NodePaths


class Quarantine:
    def __init__(self, log: logging.Logger, path: Path | None = None, process: str = ""):
        self.log, self.path, self.process = log, path, process
        self._records: dict[str, str] = {}
        self._lock = threading.Lock()
        if path is not None:
            self._write()       # a previous run's list is not this run's

    @property
    def records(self) -> dict[str, str]:
        with self._lock:
            return dict(self._records)

    def update(self, scope: str, bad: dict[str, str]) -> None:
        """What a complete read of the keys under ``scope`` found malformed."""
        with self._lock:
            changed = False
            for key in [k for k in self._records if k.startswith(scope) and k not in bad]:
                del self._records[key]
                self.log.info("record %s is readable again (or gone)", key)
                changed = True
            for key, why in bad.items():
                if self._records.get(key) != why:
                    self._records[key] = why
                    self.log.error("skipping malformed record %s: %s", key, why)
                    changed = True
            if changed:
                metrics.QUARANTINED.set(len(self._records))
                self._write()

    def note(self, key: str, why: str | None) -> None:
        """What a read of one record found: ``why`` it is malformed, or None."""
        self.update(key, {key: why} if why else {})

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"process": self.process, "records": self._records},
                                      sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:      # the report is a courtesy; skipping goes on regardless
            self.log.warning("cannot write %s: %s", self.path, exc)


def for_node(log: logging.Logger, paths: NodePaths, process: str) -> Quarantine:
    """The quarantine of one of a node's processes, reported in its state folder."""
    return Quarantine(log, paths.quarantine(process), process)


def reports(paths: NodePaths) -> dict[str, dict[str, str]]:
    """What each of a node's processes is skipping: process -> key -> what is wrong."""
    found = {}
    for file in sorted(paths.dir.glob(paths.quarantine("*").name)):
        try:
            data = json.loads(file.read_text())
            found[str(data["process"])] = {str(k): str(v) for k, v in data["records"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue            # being replaced, or not ours
    return found
