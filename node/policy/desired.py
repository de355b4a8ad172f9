"""The chains and ipsets one node wants, kept equal to what
node.policy.dataplane.compute makes of the agent's view, piece by piece.

``update(view, notes)`` recomputes only what the view's notes name (a rule
change: that profile's chains; a local endpoint: its chains and the dispatch
chains; an address joining a tag: that set member) with the same builders
``compute`` uses; ``rebuild(view)`` is an update whose notes name everything.
Each records what may now differ from what was last written:

- ``pending_chains[(version, table)]``: chains to write (or, when no longer
  wanted, to delete);
- ``pending_sets``: sets to write whole (new ones, and the small global ones);
- ``pending_members[set]``: addresses whose membership may have changed.

The agent clears each once it is in the kernel, so a write that failed is
retried by the next pass whatever that pass brings.
"""

from __future__ import annotations

from collections import defaultdict

from calicopy.model.policy import INBOUND, OUTBOUND
from node.policy.dataplane import (HOSTS_SET, TABLES, IpSet, endpoint_chains, global_chains,
                                   global_sets, has_version, profile_chain, profile_chains,
                                   tag_set)
from node.policy.view import ClusterView, Notes


class DesiredState:
    def __init__(self):
        self.tables: dict[int, dict[str, dict[str, list[str]]]] = {
            v: {t: {} for t in tables} for v, tables in TABLES.items()}
        self.sets: dict[str, IpSet] = {}
        self.owned: dict[str, list[tuple[int, str]]] = {}   # local endpoint key -> its chains
        self.pending_chains: dict[tuple[int, str], set[str]] = defaultdict(set)
        self.pending_sets: set[str] = set()
        self.pending_members: dict[str, set[str]] = defaultdict(set)

    def rebuild(self, view: ClusterView) -> None:
        """Everything from scratch: every chain and set is pending."""
        self.__init__()
        self.update(view, Notes(local=set(view.local_endpoints), profiles=set(view.profiles),
                                refs=set(view.tag_refs), settings=True))

    def clear_pending(self) -> None:
        self.pending_chains.clear()
        self.pending_sets.clear()
        self.pending_members.clear()

    def _set(self, version: int, table: str, chain: str, rules: list[str] | None) -> None:
        chains = self.tables[version][table]
        if rules is None:
            if chain not in chains:
                return
            del chains[chain]
        elif chains.get(chain) == rules:
            return
        else:
            chains[chain] = rules
        self.pending_chains[version, table].add(chain)

    def update(self, view: ClusterView, notes: Notes) -> None:
        self._tag_sets(view, notes)
        if notes.settings or notes.local:
            for version in TABLES:
                found = global_chains(version, view.local_with(version), view.pool_list(),
                                      view.endpoint_to_host_action)
                for table, chains in found.items():
                    for chain, rules in chains.items():
                        self._set(version, table, chain, rules)
        if notes.settings:
            found = global_sets(view.pool_list(), view.nodes)
            for name, ipset in found.items():
                old = self.sets.get(name)
                if old is None or set(old.members) != set(ipset.members):
                    self.sets[name] = ipset
                    self.pending_sets.add(name)
            if HOSTS_SET not in found:
                self.sets.pop(HOSTS_SET, None)       # stale: destroyed after the rules
        for name in notes.profiles | notes.used | notes.toggled:
            profile = view.profiles.get(name)
            for version in TABLES:
                if profile is not None and view.local.get((name, version)):
                    chains = profile_chains(profile, version)
                else:
                    chains = {profile_chain(name, d): None for d in (INBOUND, OUTBOUND)}
                for chain, rules in chains.items():
                    self._set(version, "filter", chain, rules)
        local = set(notes.local)
        for name in notes.toggled:          # their jumps to the profile come or go
            for version in TABLES:
                local |= view.local.get((name, version), set())
        for key in local:
            self._endpoint(view, key)

    def _tag_sets(self, view: ClusterView, notes: Notes) -> None:
        for tag in notes.refs:
            for version in TABLES:
                name = tag_set(tag, version)
                if view.tag_refs.get(tag):
                    if name not in self.sets:
                        # A live view of the view's index: its keys are the members.
                        self.sets[name] = IpSet(name, "hash:ip", version,
                                                view.tag_ips[tag, version])
                        self.pending_sets.add(name)
                else:
                    self.sets.pop(name, None)        # stale: destroyed after the rules
                    self.pending_sets.discard(name)
                    self.pending_members.pop(name, None)
        for (tag, version), ips in notes.members.items():
            name = tag_set(tag, version)
            if name in self.sets and name not in self.pending_sets:
                self.pending_members[name] |= ips

    def _endpoint(self, view: ClusterView, key: str) -> None:
        """The chains of one local endpoint (none once it is gone)."""
        old = self.owned.pop(key, [])
        ep = view.local_endpoints.get(key)
        owned = []
        if ep is not None:
            for version in TABLES:
                if has_version(ep, version):
                    for chain, rules in endpoint_chains(ep, version, view.profiles).items():
                        self._set(version, "filter", chain, rules)
                        owned.append((version, chain))
            self.owned[key] = owned
        for version, chain in old:
            if (version, chain) not in owned:
                self._set(version, "filter", chain, None)
