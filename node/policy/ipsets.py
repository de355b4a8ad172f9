"""Our ipsets in the kernel: each changed set is built aside and swapped in.

A tag's set is filled under a temporary name and swapped with the live one in
one `ipset restore`, so rules matching it never see a half-filled set. A set
whose members changed one by one gets just those: an `add` or `del` each
(``-exist``: idempotent, so a retry after a failure is safe).
"""

from __future__ import annotations

from node.policy import commands
from node.policy.dataplane import SET_PREFIX, IpSet

RESTORE = ["ipset", "restore", "-exist"]


class IpSets:
    """The kernel's sets through ``run`` (commands.run, or a stand-in for the
    kernel in tests)."""

    def __init__(self, run=commands.run):
        self.run = run

    def current(self) -> dict[str, set[str]]:
        """Our sets and their members."""
        sets: dict[str, set[str]] = {}
        for line in self.run(["ipset", "save"]).splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].startswith(SET_PREFIX):
                if parts[0] == "create":
                    sets.setdefault(parts[1], set())
                elif parts[0] == "add":
                    sets.setdefault(parts[1], set()).add(parts[2])
        return sets

    def update(self, desired: dict[str, IpSet], have: dict[str, set[str]]) -> int:
        """Create or refill sets that differ from ``have`` (the kernel's sets, or
        what we last wrote); returns how many changed."""
        script = []
        for s in desired.values():
            if have.get(s.name) == set(s.members):
                continue
            family = "inet" if s.version == 4 else "inet6"
            tmp = f"{s.name}-tmp"
            script += [f"create {s.name} {s.kind} family {family} maxelem 1048576",
                       f"create {tmp} {s.kind} family {family} maxelem 1048576",
                       f"flush {tmp}"]
            script += [f"add {tmp} {m}" for m in sorted(s.members)]
            script += [f"swap {tmp} {s.name}", f"destroy {tmp}"]
        if script:
            self.run(RESTORE, "\n".join(script) + "\n")
        return sum(1 for line in script if line.startswith("swap"))

    def change_members(self, changes: dict[str, tuple[object, set[str]]]) -> int:
        """Per set: (its members now, the addresses that may have joined or
        left); one `ipset restore` adds or deletes each of those. Returns how
        many were written."""
        script = []
        for name, (members, addresses) in changes.items():
            script += [f"{'add' if ip in members else 'del'} {name} {ip}"
                       for ip in sorted(addresses)]
        if script:
            self.run(RESTORE, "\n".join(script) + "\n")
        return len(script)

    def remove_stale(self, desired: dict[str, IpSet], have: dict[str, set[str]]) -> int:
        """Destroy our sets nothing refers to any more (after the rules changed)."""
        stale = [name for name in have if name not in desired]
        if stale:
            self.run(RESTORE, "".join(f"destroy {name}\n" for name in stale))
        return len(stale)
