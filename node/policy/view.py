"""The cluster's policy as one node's agent holds it: etcd's records, kept
current one change at a time, with the indexes that make a change cost what
it touches rather than what the cluster holds.

``load(kvs)`` replaces everything (a full resync); ``apply(key, value)``
takes one change (``value`` None: the key was deleted). Records are read as
``calicopy.model.policy.Snapshot.from_kvs`` reads them (the same decoders;
a malformed record is absent and listed in ``bad``, key -> what is wrong), so
the dataplane computed from a view equals the one computed from a snapshot
of the same records.

Each change notes in ``notes`` what it changed for the dataplane
(node.policy.desired takes the notes): which of this node's endpoints, which
profiles' rules, which profiles came to exist or stopped, which addresses
joined or left which tag, which tags came to be or stopped being used by a
rule, and whether the cluster-wide settings (pools, nodes, endpoint-to-host
action) changed.

Invariants, after every ``apply``:

- ``tag_ips[(tag, version)]`` counts, per address, the (endpoint, profile
  name, tag) triples that put it in the tag: an endpoint naming a valid
  profile that carries the tag contributes each of its addresses once per
  time it names the profile and the profile lists the tag. An address is a
  member while its count is positive; counts never go below one (an address
  whose count falls to zero is removed), so the keys are the members.
- ``members[name]`` holds the keys of every endpoint naming profile ``name``
  (valid or not); ``local[(name, version)]`` those of this node's endpoints
  with an address of ``version``.
- ``tag_refs[tag]`` counts the rules of valid profiles that name the tag.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

from calicopy.datastore import keys
from calicopy.datastore.store import KV
from calicopy.model.bgp import Node
from calicopy.model.endpoint import ACTIVE, Endpoint
from calicopy.model.ipam import Pool
from calicopy.model.policy import (DEFAULT_ENDPOINT_TO_HOST_ACTION, BadRule, Profile,
                                   endpoint_to_host_from_json, parse_rules, tags_from_json)
from calicopy.model.record import BadRecord, decode

#: The prefixes holding what the agent reads (a full resync reads these).
PREFIXES = (keys.HOSTS, keys.PROFILES, keys.pools_prefix(), keys.CONFIG)


def relevant(key: str) -> bool:
    """Whether a change of ``key`` can matter to the agent."""
    if key.startswith(keys.HOSTS):
        return keys.is_endpoint(key) or keys.is_node(key)
    return key.startswith((keys.PROFILES, keys.pools_prefix())) or \
        key == keys.ENDPOINT_TO_HOST_ACTION


@dataclasses.dataclass
class Notes:
    """What changed for the dataplane since the notes were last taken."""
    local: set[str] = dataclasses.field(default_factory=set)     # this node's endpoint keys
    profiles: set[str] = dataclasses.field(default_factory=set)  # rules or existence changed
    toggled: set[str] = dataclasses.field(default_factory=set)   # came to exist, or went
    used: set[str] = dataclasses.field(default_factory=set)      # local users changed
    members: dict[tuple[str, int], set[str]] = dataclasses.field(
        default_factory=lambda: defaultdict(set))                # (tag, version) -> addresses
    refs: set[str] = dataclasses.field(default_factory=set)      # tags used by rules or not
    settings: bool = False                                       # pools, nodes, to-host action

    def __bool__(self) -> bool:
        return bool(self.local or self.profiles or self.toggled or self.used or
                    self.members or self.refs or self.settings)


def _version(ip: str) -> int:
    return 6 if ":" in ip else 4


class ClusterView:
    """The policy-relevant records of the cluster, for node ``node``."""

    def __init__(self, node: str):
        self.node = node
        self._reset()

    def _reset(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}      # key -> an active endpoint
        self.tags: dict[str, list[str]] = {}          # profile -> its tags record
        self.rules: dict[str, tuple[str, object]] = {}  # profile -> (key, rules document)
        self.profiles: dict[str, Profile] = {}        # the valid ones
        self.pools: dict[str, dict] = {}              # key -> pool (JSON form)
        self.nodes: dict[str, tuple[str, ...]] = {}   # node -> its addresses
        self.endpoint_to_host_action = DEFAULT_ENDPOINT_TO_HOST_ACTION
        self.bad: dict[str, str] = {}
        self.members: dict[str, set[str]] = defaultdict(set)
        self.local: dict[tuple[str, int], set[str]] = defaultdict(set)
        self.local_endpoints: dict[str, Endpoint] = {}
        self.tag_ips: dict[tuple[str, int], Counter] = defaultdict(Counter)
        self.tag_refs: Counter = Counter()
        self.notes = Notes()

    # Reading records ---------------------------------------------------------------

    def load(self, kvs) -> None:
        """Replace everything with the records ``kvs`` (a full read)."""
        self._reset()
        for kv in kvs:
            self.apply(kv.key, kv.value)
        self.notes = Notes()

    def apply(self, key: str, value: str | None) -> None:
        """One record written (``value``, JSON text) or deleted (None)."""
        kv = KV(key, value, 0) if value is not None else None
        try:
            if key == keys.ENDPOINT_TO_HOST_ACTION:
                action = decode(kv, endpoint_to_host_from_json) if kv else \
                    DEFAULT_ENDPOINT_TO_HOST_ACTION
                self._set_action(action)
            elif keys.is_node(key):
                self._set_node(keys.parse_host(key), decode(kv, Node.from_json) if kv else None)
            elif keys.is_endpoint(key):
                ep = decode(kv, Endpoint.from_json) if kv else None
                self._set_endpoint(key, ep if ep is not None and ep.state == ACTIVE else None)
            elif key.startswith(keys.PROFILES):
                self._set_profile_part(key, kv)
            elif key.startswith(keys.pools_prefix()):
                self._set_pool(key, decode(kv, Pool.from_json).to_json() if kv else None)
            else:
                return
        except BadRecord as exc:        # absent, as far as the dataplane goes
            self._forget(key)
            self.bad[key] = exc.why
            return
        if not key.startswith(keys.PROFILES):
            self.bad.pop(key, None)      # (a profile's parts settle their own)

    def _forget(self, key: str) -> None:
        """A record that became unreadable: what it said goes."""
        if key == keys.ENDPOINT_TO_HOST_ACTION:
            self._set_action(DEFAULT_ENDPOINT_TO_HOST_ACTION)
        elif keys.is_node(key):
            self._set_node(keys.parse_host(key), None)
        elif keys.is_endpoint(key):
            self._set_endpoint(key, None)
        elif key.startswith(keys.PROFILES):
            self._set_profile_part(key, None)
        elif key.startswith(keys.pools_prefix()):
            self._set_pool(key, None)

    # Settings -------------------------------------------------------------------------

    def _set_action(self, action: str) -> None:
        if action != self.endpoint_to_host_action:
            self.endpoint_to_host_action = action
            self.notes.settings = True

    def _set_node(self, name: str, node: Node | None) -> None:
        ips = tuple(ip for ip in (node.ipv4, node.ipv6) if ip) if node else None
        if self.nodes.get(name) != ips:
            if ips is None:
                del self.nodes[name]
            else:
                self.nodes[name] = ips
            self.notes.settings = True

    def _set_pool(self, key: str, pool: dict | None) -> None:
        if self.pools.get(key) != pool:
            if pool is None:
                del self.pools[key]
            else:
                self.pools[key] = pool
            self.notes.settings = True

    # Endpoints --------------------------------------------------------------------------

    def is_local(self, ep: Endpoint) -> bool:
        return ep.node == self.node and bool(ep.mac)

    def _set_endpoint(self, key: str, ep: Endpoint | None) -> None:
        old = self.endpoints.get(key)
        if old == ep:
            return
        if old is not None:
            self._index_endpoint(key, old, -1)
            del self.endpoints[key]
        if ep is not None:
            self.endpoints[key] = ep
            self._index_endpoint(key, ep, +1)

    def _index_endpoint(self, key: str, ep: Endpoint, sign: int) -> None:
        for name in ep.profile_ids:
            self._count_profile_members(ep, name, self.profiles.get(name), sign)
        names = set(ep.profile_ids)
        for name in names:
            if sign > 0:
                self.members[name].add(key)
            else:
                self._discard(self.members, name, key)
        if not self.is_local(ep):
            return
        self.notes.local.add(key)
        if sign > 0:
            self.local_endpoints[key] = ep
        else:
            self.local_endpoints.pop(key, None)
        for version in {_version(ip) for ip in ep.ips}:
            for name in names:
                if sign > 0:
                    self.local[name, version].add(key)
                else:
                    self._discard(self.local, (name, version), key)
                self.notes.used.add(name)

    @staticmethod
    def _discard(index: dict, name, key: str) -> None:
        found = index.get(name)
        if found is not None:
            found.discard(key)
            if not found:
                del index[name]

    def _count_profile_members(self, ep: Endpoint, name: str, profile: Profile | None,
                               sign: int) -> None:
        """Add (sign +1) or take away (-1) what one naming of profile ``name``
        by ``ep`` puts in the tags of ``profile`` (as the profile is, or was)."""
        if profile is None:
            return
        for tag in profile.tags:
            for ip in ep.ips:
                version = _version(ip)
                counts = self.tag_ips[tag, version]
                now = counts[ip] + sign
                if now > 0:
                    counts[ip] = now
                else:
                    del counts[ip]
                if now == 0 or (now == 1 and sign > 0):
                    self.notes.members[tag, version].add(ip)

    # Profiles -------------------------------------------------------------------------

    def _set_profile_part(self, key: str, kv: KV | None) -> None:
        name, part = keys.parse_profile(key)
        if part not in ("tags", "rules"):
            return
        if part == "tags":
            self.tags.pop(name, None)
            if kv is not None:
                self.tags[name] = decode(kv, tags_from_json)   # raises: absent
        else:
            self.rules.pop(name, None)
            if kv is not None:
                self.rules[name] = (key, decode(kv, lambda data: data))
        self.bad.pop(key, None)
        self._set_profile(name, self._assemble(name))

    def _assemble(self, name: str) -> Profile | None:
        """The profile as its two records make it, as Snapshot.from_kvs does:
        both must be there and its rules valid (else it is absent; invalid
        rules are listed in ``bad``)."""
        if name not in self.tags or name not in self.rules:
            if name in self.rules:          # its rules are only checked with its tags
                self.bad.pop(self.rules[name][0], None)
            return None
        key, document = self.rules[name]
        try:
            inbound, outbound = parse_rules(document, name)
        except BadRule as exc:
            self.bad[key] = str(exc)
            return None
        return Profile(name, list(self.tags[name]), inbound, outbound)

    def _set_profile(self, name: str, profile: Profile | None) -> None:
        old = self.profiles.get(name)
        if old == profile:
            return
        if (old.tags if old else []) != (profile.tags if profile else []):
            for key in self.members.get(name, ()):
                ep = self.endpoints[key]
                for _ in range(ep.profile_ids.count(name)):
                    self._count_profile_members(ep, name, old, -1)
                    self._count_profile_members(ep, name, profile, +1)
        for tag in _referenced(old):
            self.tag_refs[tag] -= 1
            if not self.tag_refs[tag]:
                del self.tag_refs[tag]
                self.notes.refs.add(tag)
        for tag in _referenced(profile):
            self.tag_refs[tag] += 1
            if self.tag_refs[tag] == 1:
                self.notes.refs.add(tag)
        if profile is None:
            del self.profiles[name]
        else:
            self.profiles[name] = profile
        self.notes.profiles.add(name)
        if (old is None) != (profile is None):
            self.notes.toggled.add(name)

    # For the dataplane ----------------------------------------------------------------

    def take_notes(self) -> Notes:
        notes, self.notes = self.notes, Notes()
        return notes

    def local_with(self, version: int) -> list[Endpoint]:
        """This node's endpoints with an address of ``version``, by endpoint id."""
        return sorted((ep for ep in self.local_endpoints.values()
                       if any(_version(ip) == version for ip in ep.ips)),
                      key=lambda ep: ep.endpoint_id)

    def pool_list(self) -> list[dict]:
        return [self.pools[k] for k in sorted(self.pools)]


def _referenced(profile: Profile | None) -> list[str]:
    """The tags a profile's rules name, once per rule that names each."""
    if profile is None:
        return []
    return [t for r in profile.inbound + profile.outbound for t in (r.src_tag, r.dst_tag) if t]
