"""Our chains in the kernel: read what is there, write only what changed.

One ``iptables-restore --noflush`` transaction per table and IP version
writes every changed chain whole (declaring a chain empties it), deletes our
chains that are no longer wanted, and inserts the jumps from the built-in
chains if they are missing. The backend (nf_tables or legacy) is the one the
host already uses; legacy writes wait for the xtables lock.
"""

from __future__ import annotations

import shutil

from node.policy import commands
from node.policy.dataplane import HOOKS, PREFIX


def _count_rules(tool: str) -> int:
    if not shutil.which(tool):
        return -1
    out = commands.run([tool], check=False)
    return sum(1 for line in out.splitlines() if line.startswith("-A"))


def detect_backend() -> str:
    """"legacy" if the host's rules live in the legacy tables, else "nft"."""
    legacy, nft = _count_rules("iptables-legacy-save"), _count_rules("iptables-nft-save")
    if nft < 0 or legacy > nft:
        return "legacy"
    return "nft"


class Tables:
    """One IP version's tables through one backend; ``run`` runs the tools
    (commands.run, or a stand-in for the kernel in tests)."""

    def __init__(self, version: int, backend: str, run=commands.run):
        stem = "iptables" if version == 4 else "ip6tables"
        self.version, self.run = version, run
        self.save = [f"{stem}-{backend}-save"]
        self.restore = [f"{stem}-{backend}-restore", "--noflush", "--wait"]
        # What we wrote last, per table and chain: the kernel prints rules in
        # its own canonical form, so comparing against our own text is exact.
        self.written: dict[str, dict[str, list[str]]] = {}
        self.restores = 0       # restores that went through (each one ruleset change)

    def current(self, table: str) -> tuple[dict[str, int], set[str]]:
        """Our chains with their rule counts, and the built-in chains that jump to ours."""
        out = self.run(self.save + ["-t", table])
        chains: dict[str, int] = {}
        hooked = set()
        targets = [ours for _, ours in HOOKS[table]]
        for line in out.splitlines():
            if line.startswith(":") and line[1:].startswith(PREFIX):
                chains[line[1:].split()[0]] = 0
            elif line.startswith("-A "):
                chain = line.split()[1]
                if chain in chains:
                    chains[chain] += 1
                elif chain.isupper() and line.split()[2:] in (["-j", t] for t in targets):
                    # Only our unconditional jump is a hook: an operator's own
                    # conditional jump to our chain is not (it is what -C checks).
                    hooked.add(line.split()[3])
        return chains, hooked

    def hooked(self, table: str) -> bool:
        """Whether every built-in chain of ``table`` still jumps to ours."""
        for builtin, ours in HOOKS[table]:
            check = [self.save[0].replace("-save", ""), "-w", "-t", table, "-C", builtin,
                     "-j", ours]
            if self.run(check, check=False, raw=True) != 0:
                return False
        return True

    def apply(self, table: str, desired: dict[str, list[str]], full: bool = False,
              only=None) -> int:
        """Make the table's calico chains match ``desired``; returns the number
        of chains written. ``full`` reads the kernel and rewrites every chain;
        otherwise what we wrote last stands for the kernel's state, so an
        update costs only the changed chains; ``only`` (chain names) narrows
        that look to the chains that may have changed (the others are as
        last written)."""
        written = self.written.setdefault(table, {})
        if full or not written:
            current, hooked = self.current(table)
            only = None
        else:
            current = None
            hooked = {ours for _, ours in HOOKS[table]}
        lines = [f"*{table}"]
        changed = []
        look = desired if only is None else [c for c in only if c in desired]
        for chain in look:
            rules = desired[chain]
            fresh = (full or written.get(chain) != rules or
                     (current is not None and current.get(chain) != len(rules)))
            if fresh:
                changed.append(chain)
                lines.append(f":{chain} - [0:0]")
        for chain in changed:
            lines += [f"-A {chain} {rule}" for rule in desired[chain]]
        for builtin, ours in HOOKS[table]:
            if ours in desired and ours not in hooked:
                lines.append(f"-I {builtin} 1 -j {ours}")
        have = current if current is not None else written
        stale = [c for c in (have if only is None else only) if c in have and c not in desired]
        lines += [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
        if not changed and not stale and len(lines) == 1:
            return 0
        lines.append("COMMIT")
        self.run(self.restore, "\n".join(lines) + "\n")
        self.restores += 1
        for chain in changed:
            written[chain] = list(desired[chain])
        for chain in stale:
            written.pop(chain, None)
        return len(changed) + len(stale)
