"""Runs a node's processes and keeps them running.

Children start in order; a child may wait for a file (BIRD needs its first
configuration). Python children are forked from the supervisor itself
(``node.zygote``: they share its imported modules' memory), others (BIRD)
are executed. A child that exits is restarted after a back-off that grows
with quick successive failures. The supervisor writes what it runs to a
status file (``status.json``) that ``calicoctl status`` reads, whenever
that changes. A child that creates a unix socket with a mode of its own
choosing (BIRD) has it made 0600 as soon as it appears, and again whenever it
is created anew. On SIGTERM it stops the children in reverse order: SIGTERM,
then SIGKILL after a grace time.

The loop is driven by events: it sleeps until a child exits (SIGCHLD), a
signal asks it to stop, or a timer it set falls due (a restart's back-off, a
file or socket it waits for); an idle node wakes it only every ``IDLE_TICK``
seconds (to re-check sockets' modes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from calicopy import metrics
from calicopy.localfiles import SOCKET_MODE, private_socket
from node import zygote

log = logging.getLogger("calico-node")

BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0     # a child up this long gets its back-off reset
STOP_GRACE = 10.0
WAIT_TICK = 0.2         # how often a file or socket being waited for is looked for
IDLE_TICK = 5.0         # the longest the loop sleeps


def running_pid(pid_file: Path, node: str) -> int | None:
    """The pid of node ``node``'s supervisor if it runs: a stale pid file, or
    a pid since reused by another program, does not count."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"node" in cmdline and f"--name={node}".encode() in cmdline else None


@dataclasses.dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    needs_file: Path | None = None
    restart_argv: list[str] | None = None    # when a restart must run differently
    socket: Path | None = None      # a unix socket it creates: kept 0600
    fork: bool = False      # argv is [python, "-m", module, ...]: forked (node.zygote)
    title: str = ""         # a forked child's name in ps
    proc: subprocess.Popen | zygote.Forked | None = None
    restarts: int = 0
    started: float = 0.0
    backoff: float = 0.5
    next_start: float = 0.0

    def start(self) -> None:
        argv = self.restart_argv if self.restarts and self.restart_argv else self.argv
        if self.fork:
            self.proc = zygote.spawn(argv[2], argv[3:], self.log, self.env,
                                     self.title or argv[2])
        else:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL,
                                             env={**os.environ, **self.env})
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def secure_socket(self) -> bool:
        """Make the socket the child created root-only (a program such as BIRD
        chooses its own mode; it is inside the node's 0700 folder meanwhile).
        False while the socket is not there yet."""
        if self.socket is None:
            return True
        try:
            if self.socket.stat().st_mode & 0o777 != SOCKET_MODE:
                private_socket(self.socket)
        except FileNotFoundError:       # not there yet, or replaced meanwhile: next tick
            return False
        return True

    def state(self) -> dict:
        running = self.proc is not None and self.proc.poll() is None
        return {"pid": self.proc.pid if running else None,
                "state": "running" if running else "stopped", "restarts": self.restarts}


class Supervisor:
    def __init__(self, children: list[Child], status_file: Path, metrics_url: str = ""):
        self.children = children
        self.status_file = status_file
        self._written: dict | None = None
        self.metrics_url = metrics_url      # where the node's metrics are served, if anywhere

    def run(self, stop: threading.Event) -> None:
        """Tend the children until ``stop`` is set (by a signal handler)."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Any signal with a Python handler (SIGCHLD below, SIGTERM's) writes
        # a byte here, which ends the loop's sleep at once.
        previous = signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        try:
            while not stop.is_set():
                now = time.monotonic()
                due = min([now + IDLE_TICK] + [self._tend(c, now) for c in self.children])
                self._write_status()
                timeout = max(0.0, due - time.monotonic())
                if not stop.is_set() and select.select([wake_r], [], [], timeout)[0]:
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
        finally:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(previous)
            os.close(wake_r)
            os.close(wake_w)
            self.stop_all()

    def _tend(self, child: Child, now: float) -> float:
        """Start, restart or check ``child``; returns when it next needs a look."""
        if child.proc is not None and child.proc.poll() is None:
            secured = child.secure_socket()
            if now - child.started > STABLE_AFTER:
                child.backoff = 0.5
                stable_at = float("inf")
            else:
                stable_at = child.started + STABLE_AFTER + 0.01
            return min(stable_at, now + (IDLE_TICK if secured else WAIT_TICK))
        if child.proc is not None:               # it exited: schedule a restart
            log.warning("%s exited with %s; restarting in %.1fs", child.name,
                        child.proc.returncode, child.backoff)
            child.proc = None
            child.restarts += 1
            metrics.NODE_RESTARTS.inc(child=child.name)
            child.next_start = now + child.backoff
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)
            return child.next_start
        if now < child.next_start:
            return child.next_start
        if child.needs_file and not child.needs_file.exists():
            return now + WAIT_TICK
        child.start()
        return now + WAIT_TICK

    def _write_status(self) -> None:
        """Write the status file when what it says changed."""
        children = {c.name: c.state() for c in self.children}
        if children == self._written:
            return
        status = {"pid": os.getpid(), "updated": time.time(), "children": children}
        status["metrics"] = self.metrics_url      # "" when the node serves none
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.status_file)
        self._written = children

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in reversed(self.children):
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            log.info("stopped %s", child.name)
        self._write_status()
