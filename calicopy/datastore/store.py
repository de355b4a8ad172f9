"""The datastore interface every service programs against.

Values are JSON text. Writes only happen through ``Txn``: each put or delete
carries the condition it was decided on (key absent, or key unchanged since it
was read), so two writers can never both act on the same stale read. A commit
that loses such a race returns False and the caller re-reads and retries with
``retry``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterable, Protocol, TypeVar

from calicopy.errors import Aborted, CalicoError, Unavailable

T = TypeVar("T")

#: How many times a read-modify-write loop retries after losing a race.
DEFAULT_ATTEMPTS = 20


class DatastoreUnavailable(Unavailable):
    """etcd cannot be reached."""

    def __init__(self, endpoints: str, cause: str = ""):
        detail = f": {cause}" if cause else ""
        super().__init__(f"Error accessing etcd ({endpoints}){detail}. Is etcd running?")
        self.endpoints = endpoints


class LeaseExpired(CalicoError):
    """A write named a lease that has expired (or never was)."""

    def __init__(self, lease: int):
        super().__init__(f"etcd lease {lease:x} has expired.")
        self.lease = lease


class ContentionError(Aborted):
    """A read-modify-write lost its race more than the allowed number of times."""

    def __init__(self, what: str, attempts: int):
        super().__init__(
            f"Gave up on {what} after losing {attempts} compare-and-swap races; "
            "the datastore is heavily contended, retry the request.")
        self.what = what


@dataclasses.dataclass(frozen=True)
class KV:
    """One key as read, with the revision a conditional write compares against."""

    key: str
    value: str
    mod_revision: int

    def json(self) -> Any:
        return json.loads(self.value)


@dataclasses.dataclass(frozen=True)
class Compare:
    """A condition on one key: ``mod_revision == 0`` means "must not exist"."""

    key: str
    mod_revision: int


@dataclasses.dataclass
class Txn:
    """An atomic set of conditional writes."""

    compares: list[Compare] = dataclasses.field(default_factory=list)
    puts: dict[str, str] = dataclasses.field(default_factory=dict)
    deletes: list[str] = dataclasses.field(default_factory=list)
    leases: dict[str, int] = dataclasses.field(default_factory=dict)

    def create(self, key: str, value: Any) -> "Txn":
        """Write a new key; fails the commit if it exists."""
        self.compares.append(Compare(key, 0))
        self.puts[key] = _dump(value)
        return self

    def update(self, kv: KV, value: Any) -> "Txn":
        """Overwrite a key read as ``kv``; fails the commit if it changed since."""
        self.compares.append(Compare(kv.key, kv.mod_revision))
        self.puts[kv.key] = _dump(value)
        return self

    def put(self, key: str, old: KV | None, value: Any, lease: int = 0) -> "Txn":
        """Create or update, whichever ``old`` (the read) says applies; with a
        lease the key disappears when the lease expires."""
        if lease:
            self.leases[key] = lease
        return self.update(old, value) if old else self.create(key, value)

    def delete(self, kv: KV) -> "Txn":
        """Delete a key read as ``kv``; fails the commit if it changed since."""
        self.compares.append(Compare(kv.key, kv.mod_revision))
        self.deletes.append(kv.key)
        return self

    def require_unchanged(self, kv: KV) -> "Txn":
        """Commit only if ``kv`` has not changed (or been deleted) since read."""
        self.compares.append(Compare(kv.key, kv.mod_revision))
        return self

    def require_absent(self, key: str) -> "Txn":
        self.compares.append(Compare(key, 0))
        return self

    def keys(self) -> list[str]:
        return sorted({c.key for c in self.compares})


class Store(Protocol):
    """What the services need from a datastore."""

    endpoints: str

    def get(self, key: str) -> KV | None: ...

    def list(self, prefix: str) -> list[KV]:
        """Every key under ``prefix``, sorted by key."""

    def snapshot(self, prefix: str) -> tuple[int, list[KV]]:
        """Like ``list``, with the store revision the keys are consistent at."""

    def commit(self, txn: Txn) -> int:
        """Apply ``txn`` atomically if every compare holds.

        Returns the revision it was committed at (the new ``mod_revision`` of
        every key it wrote), or 0 when a compare failed and nothing changed.
        Raises LeaseExpired if a lease it names has expired.
        """

    def delete_prefix(self, prefix: str) -> int:
        """Unconditionally delete a subtree (reset and test teardown only)."""

    def grant_lease(self, ttl: int) -> int:
        """A lease that expires ``ttl`` seconds after its last refresh."""

    def refresh_lease(self, lease: int) -> bool:
        """Keep a lease alive; False if it has expired already."""

    def watch(self, prefix: str, on_event) -> object:
        """Call ``on_event(response)`` with the events of changes under
        ``prefix``, and once, whatever ends the watch, with something that
        has no ``events`` (calicopy.datastore.etcd_watch.WatchEnded); raises
        if the watch cannot be made. Returns a handle for ``cancel_watch``."""

    def cancel_watch(self, handle) -> None: ...


def retry(what: str, attempt: Callable[[], T | None],
          attempts: int = DEFAULT_ATTEMPTS) -> T:
    """Run ``attempt`` (read, decide, commit) until it returns non-None.

    ``attempt`` returns None when its commit lost a race; anything else is the
    result. Raises ContentionError naming ``what`` when attempts run out.
    """
    for _ in range(attempts):
        result = attempt()
        if result is not None:
            return result
    raise ContentionError(what, attempts)


def _dump(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                            separators=(",", ":"))


def values(kvs: Iterable[KV]) -> list[Any]:
    return [kv.json() for kv in kvs]
