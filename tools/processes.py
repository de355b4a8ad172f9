"""Stopping processes and cgroups we started, and reading the end of their logs,
with the standard library only (tools/compose.py and the modules it uses run
under the system Python, without the venv)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def gone(pid: int) -> bool:
    """No such process, or a zombie: a process that is not our child counts as
    gone once dead, however slow its parent is to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; the process may not be our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if gone(pid):
                return
        time.sleep(0.05)
    kill(pid)


def tail(log: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, for an error message ("" if unreadable)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cgroup_dirs(pid: int | str, parent: str) -> list[Path]:
    """The cgroup ``parent`` in every hierarchy: dockerd gives runc a relative
    parent, which lands under dockerd's own cgroup of each hierarchy."""
    mounts: dict[str, str] = {}
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _, point, fstype, options = line.split()[:4]
            if fstype == "cgroup2":
                mounts.setdefault("", point)
            elif fstype == "cgroup":
                for option in options.split(","):     # controllers, or name=systemd
                    mounts.setdefault(option, point)
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    dirs = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        point = mounts.get(controllers.split(",")[0])
        if point:
            dirs.append(Path(point + path.rstrip("/")) / parent)
    return dirs


def kill_cgroup_members(dirs: list[Path]) -> None:
    for top in dirs:
        for path, _, _ in os.walk(top):
            try:
                pids = Path(path, "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                kill(int(pid))


def remove_cgroups(dirs: list[Path], timeout: float = 5.0) -> None:
    """Kill any process still in these cgroup trees, then remove them,
    deepest first (a cgroup goes only once its processes are gone)."""
    kill_cgroup_members(dirs)
    deadline = time.monotonic() + timeout
    for top in dirs:
        for path, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
