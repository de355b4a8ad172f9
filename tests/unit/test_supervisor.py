"""The node supervisor with children forked from itself (node.zygote)."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from node import zygote
from node.supervisor import Child, Supervisor

MODULE = "tests.unit.zygote_child"


class Until:
    """A stop event that is set once ``done()`` holds (or a deadline passed)."""

    def __init__(self, done, timeout: float = 30):
        self.done, self.deadline = done, time.monotonic() + timeout

    def is_set(self) -> bool:
        return self.done() or time.monotonic() > self.deadline


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_forked_child_runs_its_module_main_and_is_restarted(tmp_path):
    marker, log, status = tmp_path / "marker", tmp_path / "probe.log", tmp_path / "status.json"
    child = Child("probe", [sys.executable, "-m", MODULE, "--x=1", str(marker)], log,
                  env={"ZYGOTE_PROBE": "yes"}, fork=True, title="calico-probe")
    pids = []

    def restarted() -> bool:
        if child.proc is not None and child.proc.pid not in pids:
            pids.append(child.proc.pid)
        return child.restarts == 1 and log.exists() and log.read_text().count("argv=") == 2

    Supervisor([child], status).run(Until(restarted))

    lines = log.read_text().splitlines()
    run = "argv=['--x=1'] probe=yes comm=calico-probe"
    # The first run's exit message (a string, as docopt gives) is in its log.
    assert lines == [run, "Usage: first run fails", run], lines
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(gone(pid) for pid in pids)            # stopped and reaped
    written = json.loads(status.read_text())
    assert written["children"]["probe"] == {"pid": None, "state": "stopped", "restarts": 1}


def test_a_child_that_ignores_sigterm_is_killed_at_stop(tmp_path, monkeypatch):
    monkeypatch.setattr("node.supervisor.STOP_GRACE", 0.5)
    marker = tmp_path / "marker"
    marker.write_text("ran")            # straight to the long-running part
    child = Child("probe", [sys.executable, "-m", MODULE, str(marker)], tmp_path / "p.log",
                  fork=True)
    # SIGTERM's default action ends it; a child that waits on is killed.
    Supervisor([child], tmp_path / "status.json").run(
        Until(lambda: child.proc is not None and (tmp_path / "p.log").exists()))
    assert child.proc.returncode is not None
    assert gone(child.proc.pid)


def test_preload_reports_what_it_could_not_import():
    assert zygote.preload(["tests.unit.zygote_child", "no.such.module"]) == ["no.such.module"]
    assert zygote.entry_module("node.policy") == "node.policy.__main__"
    assert zygote.entry_module(MODULE) == MODULE


@pytest.fixture(autouse=True)
def _unfreeze():
    yield
    import gc
    gc.unfreeze()
