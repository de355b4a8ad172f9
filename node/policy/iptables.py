"""Our chains in the kernel: read what is there, write only what changed.

One ``iptables-restore --noflush`` transaction per table and IP version
writes every changed chain whole (declaring a chain empties it), deletes our
chains that are no longer wanted, and inserts the jumps from the built-in
chains if they are missing. The backend (nf_tables or legacy) is the one the
host already uses; legacy writes wait for the xtables lock.

A full resync rewrites every chain (repairing hand edits) but keeps the
packet and byte counters of a chain we had written with the same rules
(``--counters``): they are what ``profile P rule show --stats`` reads
(``counters``), so they count since the rule was last changed, not since the
last resync. ip6tables-nft-restore (1.8.9, Debian 12) ignores the counters it
is given, so for IPv6 on nf_tables the counts the rewrite drops are kept
here instead (``offsets``) and added when read.
"""

from __future__ import annotations

import shutil
import threading

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
        self.restore = [f"{stem}-{backend}-restore", "--noflush", "--wait", "--counters"]
        # What we wrote last, per table and chain: the kernel prints rules in
        # its own canonical form, so comparing against our own text is exact.
        self.written: dict[str, dict[str, list[str]]] = {}
        # Counts a rewrite of unchanged rules lost, per table, chain and rule.
        self.offsets: dict[str, dict[str, list[tuple[int, int]]]] = {}
        self.restore_keeps_counters = not (version == 6 and backend == "nft")
        self._lock = threading.Lock()       # apply against counters (another thread)
        self.restores = 0       # restores that went through (each one ruleset change)

    def current(self, table: str) -> tuple[dict[str, int], set[str], dict[str, list[str]]]:
        """Our chains with their rule counts, the built-in chains that jump to
        ours, and our chains' rules' counters (``[packets:bytes]``, in order)."""
        out = self.run(self.save + ["-c", "-t", table])
        chains: dict[str, int] = {}
        counters: dict[str, list[str]] = {}
        hooked = set()
        targets = [ours for _, ours in HOOKS[table]]
        for line in out.splitlines():
            count = ""
            if line.startswith("[") and "] -A " in line:
                count, line = line.split(" ", 1)
            if line.startswith(":") and line[1:].startswith(PREFIX):
                chains[line[1:].split()[0]] = 0
                counters[line[1:].split()[0]] = []
            elif line.startswith("-A "):
                chain = line.split()[1]
                if chain in chains:
                    chains[chain] += 1
                    counters[chain].append(count)
                elif chain.isupper() and line.split()[2:] in (["-j", t] for t in targets):
                    # Only our unconditional jump is a hook: an operator's own
                    # conditional jump to our chain is not (it is what -C checks).
                    hooked.add(line.split()[3])
        return chains, hooked, counters

    def hooked(self, table: str) -> bool:
        """Whether every built-in chain of ``table`` still jumps to ours."""
        for builtin, ours in HOOKS[table]:
            check = [self.save[0].replace("-save", ""), "-w", "-t", table, "-C", builtin,
                     "-j", ours]
            if self.run(check, check=False, raw=True) != 0:
                return False
        return True

    def counters(self, table: str) -> dict[str, list[tuple[int, int, str]]]:
        """Our chains' rules with their packets and bytes, in order: what the
        kernel counts, plus what rewrites of the same rules lost."""
        with self._lock:
            out = self.run(self.save + ["-c", "-t", table])
            offsets = dict(self.offsets.get(table, {}))
        chains: dict[str, list[tuple[int, int, str]]] = {}
        for line in out.splitlines():
            if not line.startswith("[") or "] -A " not in line:
                continue
            count, rule = line.split(" ", 1)
            chain = rule.split()[1]
            if not chain.startswith(PREFIX):
                continue
            packets, nbytes = (int(n) for n in count.strip("[]").split(":"))
            rules = chains.setdefault(chain, [])
            extra = offsets.get(chain, [])
            if len(rules) < len(extra):
                packets, nbytes = packets + extra[len(rules)][0], nbytes + extra[len(rules)][1]
            rules.append((packets, nbytes, rule))
        return chains

    def apply(self, table: str, desired: dict[str, list[str]], full: bool = False,
              only=None) -> int:
        """Make the table's calico chains match ``desired``; returns the number
        of chains written. ``full`` reads the kernel and rewrites every chain;
        otherwise what we wrote last stands for the kernel's state, so an
        update costs only the changed chains; ``only`` (chain names) narrows
        that look to the chains that may have changed (the others are as
        last written)."""
        with self._lock:
            return self._apply(table, desired, full, only)

    def _apply(self, table: str, desired: dict[str, list[str]], full: bool, only) -> int:
        written = self.written.setdefault(table, {})
        offsets = self.offsets.setdefault(table, {})
        lost: dict[str, list[tuple[int, int]]] = {}
        counters: dict[str, list[str]] = {}
        if full or not written:
            current, hooked, counters = self.current(table)
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
            # The same rules as we wrote last: the kernel's counters carry over.
            keep = (counters.get(chain) if written.get(chain) == desired[chain] else None)
            if keep and len(keep) == len(desired[chain]) and all(keep):
                lines += [f"{c} -A {chain} {rule}" for c, rule in zip(keep, desired[chain])]
                if not self.restore_keeps_counters:
                    before = offsets.get(chain) or [(0, 0)] * len(keep)
                    lost[chain] = [(int(c.strip("[]").split(":")[0]) + old[0],
                                    int(c.strip("[]").split(":")[1]) + old[1])
                                   for c, old in zip(keep, before)]
            else:
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
            offsets.pop(chain, None)
        offsets.update(lost)
        for chain in stale:
            written.pop(chain, None)
            offsets.pop(chain, None)
        return len(changed) + len(stale)
