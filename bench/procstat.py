"""What a set of processes costs: memory (PSS) and CPU, read from /proc.

PSS (proportional set size, ``Pss:`` of ``/proc/<pid>/smaps_rollup``) counts
each page a process maps divided by the number of processes mapping it, so
the PSS of a set of processes adds up to the memory they use between them:
pages shared with a parent they were forked from are counted once in total.
CPU is ``utime + stime`` of ``/proc/<pid>/stat`` (in clock ticks).
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (by parent pid), root first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss`` and ``Private`` (clean and dirty: pages no other
    process maps, e.g. written since a fork) of ``pid`` in KiB; zeros when
    it is gone."""
    found = {"Rss": 0, "Pss": 0, "Private": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            field, _, rest = line.partition(":")
            if field in ("Rss", "Pss"):
                found[field] = int(rest.split()[0])
            elif field in ("Private_Clean", "Private_Dirty"):
                found["Private"] += int(rest.split()[0])
    except OSError:
        pass
    return found


def pss_kib(pid: int) -> int:
    """The PSS of ``pid`` in KiB (0 when it is gone)."""
    return memory_kib(pid)["Pss"]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def name(pid: int) -> str:
    """A short name: the module a Python process runs, else its program."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return f"pid {pid}"
    words = [a.decode(errors="replace") for a in argv if a]
    if "-m" in words[:-1]:
        module = words[words.index("-m") + 1]
        # A process forked by the node supervisor keeps its argv but is
        # named by its comm (calicopy's forked children set it).
        return comm if comm.startswith("calico-") else module
    return comm or (Path(words[0]).name if words else f"pid {pid}")
