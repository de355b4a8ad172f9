"""A store that runs a test's code at a chosen moment of another caller's work.

``HookedStore`` wraps a store (usually the MemoryStore another IPAM instance
uses directly) and, once, runs an action just before or just after the first
operation that matches a predicate: how the unit tests interleave two IPAM
replicas, or a replica and a change of the records, deterministically.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from calicopy.datastore.store import Txn


@dataclasses.dataclass
class _Hook:
    op: str                    # "commit", "get" or "list"
    when: str                  # "before" or "after"
    matches: Callable
    action: Callable
    fired: bool = False


class HookedStore:
    def __init__(self, inner):
        self.inner = inner
        self.endpoints = inner.endpoints
        self._hooks: list[_Hook] = []

    def before_commit(self, matches: Callable[[Txn], bool], action: Callable[[], None]):
        self._hooks.append(_Hook("commit", "before", matches, action))

    def after_commit(self, matches: Callable[[Txn], bool], action: Callable[[], None]):
        self._hooks.append(_Hook("commit", "after", matches, action))

    def before_list(self, matches: Callable[[str], bool], action: Callable[[], None]):
        self._hooks.append(_Hook("list", "before", matches, action))

    def fired(self) -> bool:
        return all(h.fired for h in self._hooks)

    def _run(self, op, when, arg, result=None):
        for hook in self._hooks:
            if not hook.fired and hook.op == op and hook.when == when and \
                    hook.matches(*((arg,) if result is None else (arg, result))):
                hook.fired = True
                hook.action()

    def commit(self, txn: Txn) -> int:
        self._run("commit", "before", txn)
        revision = self.inner.commit(txn)
        self._run("commit", "after", txn, revision)
        return revision

    def get(self, key):
        return self.inner.get(key)

    def list(self, prefix):
        self._run("list", "before", prefix)
        return self.inner.list(prefix)

    def snapshot(self, prefix):
        return self.inner.snapshot(prefix)

    def delete_prefix(self, prefix):
        return self.inner.delete_prefix(prefix)


def creates(fragment: str, value_fragment: str = "") -> Callable:
    """Matches a transaction that writes a key containing ``fragment`` (whose
    value contains ``value_fragment``)."""
    def match(txn, revision=None):
        return any(fragment in k and value_fragment in v for k, v in txn.puts.items()) \
            and (revision is None or revision > 0)
    return match
