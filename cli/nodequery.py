"""Asking every node's policy agent a question through etcd (live drops, rule
counters), as the operator.

The question is one key under ``keys.QUERIES`` written under a lease that
this process keeps alive while it waits (or follows), and deletes when done;
each node whose agent runs answers under its own prefix (``keys.answer``),
see node.policy.drops. etcd is the one place every host already reaches with
mutual TLS and per-identity permissions, so calicoctl needs no address of,
and no port on, any node: a node's agent may write only its own answers, and
only the administrator may ask.
"""

from __future__ import annotations

import threading
import time
import uuid

import contextlib

from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import Store, Txn
from calicopy.errors import CalicoError
from calicopy.model.policy import Snapshot
from cli.errors import CliError

QUERY_TTL = 10        # seconds a question outlives a calicoctl that died
WAIT = 5.0            # for every node to answer a one-off question
POLL = 0.1


@contextlib.contextmanager
def etcd():
    """The operator's etcd client; a datastore failure becomes one line."""
    try:
        store = EtcdStore.from_env()
    except CalicoError as exc:
        raise CliError(str(exc)) from None
    try:
        yield store
    except CalicoError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()


class Question:
    """One question to ``nodes`` (names); a context manager: asked on entry,
    withdrawn on exit."""

    def __init__(self, store: Store, nodes: list[str], **query):
        self.store, self.nodes = store, nodes
        self.id = uuid.uuid4().hex[:16]
        self.query = {**query, "nodes": nodes}
        self._lease = 0
        self._refreshed = 0.0

    def __enter__(self) -> "Question":
        self._lease = self.store.grant_lease(QUERY_TTL)
        self._refreshed = time.monotonic()
        self.store.commit(Txn().put(keys.query(self.id), None, self.query, lease=self._lease))
        return self

    def __exit__(self, *exc) -> None:
        kv = self.store.get(keys.query(self.id))
        if kv is not None:
            self.store.commit(Txn().delete(kv))

    def keepalive(self) -> None:
        if time.monotonic() - self._refreshed >= QUERY_TTL / 3:
            self.store.refresh_lease(self._lease)
            self._refreshed = time.monotonic()

    def answers(self) -> dict[str, dict]:
        """node -> its latest answer, for those that have answered."""
        out = {}
        for node in self.nodes:
            kv = self.store.get(keys.answer(node, self.id))
            if kv is not None:
                out[node] = kv.json()
        return out

    def wait(self, timeout: float | None = None, stop: threading.Event | None = None
             ) -> dict[str, dict]:
        """The answers once every node gave one, or what came within ``timeout``
        (default WAIT)."""
        deadline = time.monotonic() + (WAIT if timeout is None else timeout)
        stop = stop or threading.Event()
        while True:
            got = self.answers()
            if len(got) == len(self.nodes) or time.monotonic() >= deadline:
                return got
            stop.wait(POLL)


def cluster(store: Store) -> Snapshot:
    """Everything calico-py holds in etcd (nodes, endpoints), as one snapshot."""
    revision, kvs = store.snapshot(keys.PREFIX)
    return Snapshot.from_kvs(revision, kvs)


def nodes(snapshot: Snapshot, only: str | None) -> list[str]:
    """The registered nodes to ask: all, or ``only`` (which must be one)."""
    names = sorted(snapshot.nodes)
    if only is not None:
        if only not in names:
            raise CliError(f"No node named '{only}' is registered "
                           f"(nodes: {', '.join(names) or 'none'}).")
        return [only]
    if not names:
        raise CliError("No node is registered: start one with `calicoctl node`.")
    return names


def silent(asked: list[str], answered: dict) -> str:
    """The line saying which nodes did not answer ('' if all did)."""
    missing = [n for n in asked if n not in answered]
    if not missing:
        return ""
    return (f"No answer from node(s) {', '.join(missing)} within {WAIT:g}s "
            f"(is their policy agent running?).")
