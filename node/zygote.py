"""Python children forked from the node supervisor instead of started afresh.

The supervisor imports, once, the modules its Python children run (grpc,
protobuf, the generated code, pyroute2, calicopy...), freezes what it holds
(``gc.freeze``: the collector then never writes to those objects, so their
pages stay shared) and forks each child from itself. The children share
those pages with the supervisor and each other, copy-on-write, instead of
each loading its own copy: the node's memory is counted once, not seven
times. Each child is still its own process, restarted by the supervisor when
it dies, and runs ``main(argv)`` of its module's ``__main__`` exactly as
``python -m <module> <argv>`` would (its own log as stdout and stderr, stdin
from /dev/null, its extra environment, default signal handlers, no
descriptor of the supervisor's).

Invariant: the supervisor runs no child's code itself and starts no thread
before forking, so every fork starts from the same clean, single-threaded
state (grpc's core is loaded but never initialised there).
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

log = logging.getLogger("calico-node")

PR_SET_NAME = 15        # prctl(2): the name ps and top show (comm, 15 bytes)
M_ARENA_MAX = -8        # mallopt(3)
ARENA_MAX = 2           # glibc's default is 8 per core: each thread's arena is memory


def entry_module(module: str) -> str:
    """Where ``python -m <module>`` finds its code: ``<module>.__main__`` for
    a package."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations is not None:
        return f"{module}.__main__"
    return module


def preload(modules: list[str]) -> list[str]:
    """Import the children's modules here, then freeze the collector's view
    of everything loaded and switch the collector on (the caller switched it
    off before its own imports, as gc.freeze's documentation advises).
    Returns the modules that failed to import (logged; their children import
    them themselves and fail there, visibly)."""
    failed = []
    for module in modules:
        try:
            importlib.import_module(entry_module(module))
        except Exception:       # noqa: BLE001 - the child reports it in its own log
            log.exception("could not preload %s", module)
            failed.append(module)
    gc.freeze()
    gc.enable()
    _limit_arenas()
    return failed


def _limit_arenas() -> None:
    """Fewer malloc arenas (inherited by the children): with ~10 threads each
    (grpc's, the watch's), glibc would give most of them an arena of their
    own, each holding freed memory apart."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, ARENA_MAX)
    except (OSError, AttributeError):       # not glibc: its own policy then
        pass


class Forked:
    """A forked child, with the part of subprocess.Popen the supervisor uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:       # reaped elsewhere: it is gone
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def spawn(module: str, args: list[str], log_path: Path, env: dict[str, str],
          title: str) -> Forked:
    """Fork a child that runs ``python -m <module> <args>``'s main; its
    output is appended to ``log_path``; ``title`` names it in ps (comm)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 1
    try:
        code = _child(module, args, log_path, env, title)
    except SystemExit as exc:           # what `python -m` would make of it
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:               # noqa: BLE001 - reported, then exit 1
        traceback.print_exc()
    finally:
        _exit(code)


def _child(module: str, args: list[str], log_path: Path, env: dict[str, str],
           title: str) -> int:
    out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # Streams on the new descriptors, buffered as a fresh interpreter's
    # would be (whatever the supervisor's streams were, e.g. under a test).
    sys.stdin = open(0, closefd=False)      # noqa: SIM115 - for the process's life
    sys.stdout = open(1, "w", closefd=False)    # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace",  # noqa: SIM115
                      closefd=False)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.update(env)
    # The supervisor's logging configuration is not the child's: basicConfig
    # in its main must take effect as in a fresh interpreter.
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    _set_title(title)
    sys.argv = [module, *args]
    main = importlib.import_module(entry_module(module)).main
    return main(args)


def _set_title(title: str) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, title.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):      # a name for ps only: not worth failing over
        pass


def _exit(code: int) -> None:
    """Leave as the interpreter would (non-daemon threads joined, atexit
    handlers run, streams flushed), but never back into the supervisor's code."""
    try:
        import threading
        threading._shutdown()           # noqa: SLF001 - what Py_Finalize does first
        import atexit
        atexit._run_exitfuncs()         # noqa: SLF001
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    finally:
        os._exit(code if isinstance(code, int) else 1)
