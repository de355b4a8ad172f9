"""This node's live drops and per-rule counters, and its answers to the
administrator's questions about them.

- ``DropLog`` listens on the NFLOG group the dataplane samples denied packets
  to (node.policy.dataplane: every policy DROP is preceded by a rate-limited
  NFLOG rule), names each sample's rule from its prefix (``<chain>/<n>:<hash>``:
  iptables-save maps it to the rule's comment, the verdict in ``policy
  explain``'s words; the hash tells a stale mapping, after a rule update, from
  a good one) and keeps the last RING samples in memory.
- ``rule_counters`` reads one profile's packet and byte counters per rule
  through the agent's tables (``iptables-save -c``, plus what rewrites lost:
  node.policy.iptables), both IP versions summed.
- ``Answers`` follows the questions under ``keys.QUERIES`` (written by
  ``calicoctl policy drops`` and ``profile P rule show --stats``, as admin,
  under a lease) and answers each under this node's own prefix
  (``keys.answer``), under a lease too: a node's etcd user may write there
  and nowhere else, and an answer vanishes when its node or its question is
  gone. A ``follow`` question is answered again whenever new drops came, at
  most every POLL seconds and only while the question lives: nothing is
  written to etcd while nobody asks.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import shlex
import threading
import time
from typing import Callable

from calicopy.datastore import keys
from calicopy.datastore.report import LeasedReport
from calicopy.datastore.store import Store
from calicopy.datastore.watchloop import WatchLoop
from calicopy.model.policy import INBOUND, OUTBOUND
from node.policy import commands
from node.policy.dataplane import NFLOG_GROUP, profile_chain
from node.policy.iptables import Tables
from node.policy.nflog import Listener, Sample

log = logging.getLogger("calico-policy-agent.drops")

RING = 200                # samples kept in memory
ANSWER_DROPS = 100        # at most this many per answer
FOLLOW_DROPS = 20         # per answer to a follower (rewritten as drops come)
ANSWER_TTL = 15           # seconds an answer outlives its node's keep-alives
POLL = 0.25               # a follower sees a new drop this soon (and etcd no more often)
IDLE_POLL = 60.0          # with no question open: a new one wakes the watch anyway
REMAP_EVERY = 1.0         # iptables-save at most this often for unknown prefixes
UNKNOWN = "denied (rule no longer programmed)"


def _save_command(version: int, backend: str) -> list[str]:
    return [f"{'iptables' if version == 4 else 'ip6tables'}-{backend}-save"]


def _option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words[:-1] else None


def verdicts(save_output: str) -> dict[str, str]:
    """NFLOG prefix -> the comment of its rule, from iptables-save's output."""
    out = {}
    for line in save_output.splitlines():
        if "--nflog-prefix" not in line:
            continue
        words = shlex.split(line)
        prefix, comment = _option(words, "--nflog-prefix"), _option(words, "--comment")
        if prefix and comment:
            out[prefix] = comment
    return out


class DropLog:
    """The last RING denied packets, named by rule; ``run`` listens until stopped."""

    def __init__(self, backend: str, run=commands.run,
                 clock: Callable[[], float] = time.monotonic):
        self.backend, self.run_tool, self._clock = backend, run, clock
        self.ring: collections.deque[dict] = collections.deque(maxlen=RING)
        self.seq = 0
        self._names: dict[int, dict[str, str]] = {4: {}, 6: {}}
        self._mapped = {4: -REMAP_EVERY, 6: -REMAP_EVERY}
        self._lock = threading.Lock()

    def _verdict(self, version: int, prefix: str) -> str:
        names = self._names[version]
        if prefix not in names and self._clock() - self._mapped[version] >= REMAP_EVERY:
            self._mapped[version] = self._clock()
            text = "".join(self.run_tool(_save_command(version, self.backend) + ["-t", t],
                                         check=False) for t in ("filter", "raw"))
            self._names[version] = names = verdicts(text)
        return names.get(prefix, UNKNOWN)

    def add(self, samples: list[Sample]) -> None:
        """Name and keep ``samples`` (from our own NFLOG rules only)."""
        entries = []
        for s in samples:
            if not s.prefix.startswith("cali-"):
                continue
            entry = dataclasses.asdict(s)
            entry["verdict"] = self._verdict(s.version, s.prefix)
            entries.append(entry)
        if not entries:
            return
        with self._lock:
            for entry in entries:
                self.seq += 1
                entry["seq"] = self.seq
                self.ring.append(entry)

    def since(self, seq: int) -> list[dict]:
        """The kept samples after ``seq``, oldest first (at most ANSWER_DROPS)."""
        with self._lock:
            return [e for e in self.ring if e["seq"] > seq][-ANSWER_DROPS:]

    def run(self, stop: threading.Event, group: int = NFLOG_GROUP) -> None:
        try:
            listener = Listener(group)
        except OSError as exc:
            log.error("no live drops: cannot listen on NFLOG group %d: %s", group, exc)
            return
        log.info("sampling denied packets from NFLOG group %d", group)
        try:
            while not stop.is_set():
                try:
                    self.add(listener.receive(timeout=0.5))
                except Exception as exc:      # one bad message must not end the sampling
                    log.error("reading NFLOG group %d: %s", group, exc, exc_info=True)
                    stop.wait(1.0)
        finally:
            listener.close()


_RULE = re.compile(r"-A (\S+) .*--comment \"?profile .* rule (\d+): .*-j (MARK|DROP)\b")


def rule_counters(profile: str, tables: dict[int, Tables]) -> dict[str, dict]:
    """``{"inbound": {rule number: {"packets", "bytes"}}, "outbound": ...}`` for
    ``profile`` on this node (IPv4 and IPv6 summed; a rule's split clauses
    too), from the policy agent's tables (``Tables.counters``)."""
    chains = {profile_chain(profile, d): d for d in (INBOUND, OUTBOUND)}
    out: dict[str, dict] = {INBOUND: {}, OUTBOUND: {}}
    for version in (4, 6):
        for chain, rules in tables[version].counters("filter").items():
            if chain not in chains:
                continue
            for packets, nbytes, rule in rules:
                match = _RULE.match(rule)
                if not match:
                    continue
                counts = out[chains[chain]].setdefault(int(match[2]),
                                                       {"packets": 0, "bytes": 0})
                counts["packets"] += packets
                counts["bytes"] += nbytes
    return out


class Answers:
    """Answers the questions under keys.QUERIES that concern this node."""

    def __init__(self, store: Store, node: str, drops: DropLog, tables: dict[int, Tables]):
        self.store, self.node, self.drops, self.tables = store, node, drops, tables
        self._open: dict[str, tuple[dict, LeasedReport, int]] = {}   # id -> query, answer, seq

    def _concerns(self, query: dict) -> bool:
        nodes = query.get("nodes") or []
        return not nodes or self.node in nodes

    def _answer(self, query: dict) -> dict:
        if query.get("kind") == "counters":
            return {"node": self.node, "kind": "counters",
                    "counters": rule_counters(str(query.get("profile", "")), self.tables)}
        # A follower polls the latest answer and keeps what it has not printed
        # (by seq): a short window, rewritten as drops come.
        last = FOLLOW_DROPS if query.get("follow") else ANSWER_DROPS
        return {"node": self.node, "kind": "drops", "drops": self.drops.since(0)[-last:]}

    def sync(self, full: bool, events) -> None:
        if full or events:
            current = {}
            for kv in self.store.list(keys.QUERIES):
                query = kv.json()
                if isinstance(query, dict) and self._concerns(query):
                    current[kv.key[len(keys.QUERIES):]] = query
            for query_id in set(self._open) - set(current):
                del self._open[query_id]          # its answer's lease runs out by itself
            for query_id, query in current.items():
                if query_id not in self._open:
                    report = LeasedReport(self.store, keys.answer(self.node, query_id),
                                          ANSWER_TTL)
                    report.publish(self._answer(query))
                    self._open[query_id] = (query, report, self.drops.seq)
        for query_id, (query, report, seen) in list(self._open.items()):
            if query.get("follow") and query.get("kind") == "drops" and \
                    self.drops.seq != seen:
                report.publish(self._answer(query))
                self._open[query_id] = (query, report, self.drops.seq)

    def keepalive(self) -> None:
        for _, report, _ in list(self._open.values()):
            report.keepalive()

    def run(self, stop: threading.Event) -> None:
        # While a question is open, a pass every POLL seconds (followers' answers
        # are rewritten at most that often) and keep-alives; else only the watch.
        loop = WatchLoop(self.store, keys.QUERIES, self.sync, log=log, resync=60.0,
                         poll=lambda: POLL if self._open else IDLE_POLL, tick=self.keepalive,
                         tick_every=lambda: ANSWER_TTL / 6 if self._open else IDLE_POLL,
                         relevant=lambda response: True)
        loop.run(stop)


def start(store: Store, node: str, backend: str, tables: dict[int, Tables],
          stop: threading.Event) -> DropLog:
    """Listen for drops and answer questions, each in a thread, until ``stop``;
    ``tables`` are the policy agent's (their counters)."""
    drops = DropLog(backend)
    threading.Thread(target=drops.run, args=(stop,), name="drops", daemon=True).start()
    threading.Thread(target=Answers(store, node, drops, tables).run, args=(stop,),
                     name="answers", daemon=True).start()
    return drops
