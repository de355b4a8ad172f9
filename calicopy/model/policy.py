"""Profiles and their rules, in the original tool's JSON format, validated;
and the whole cluster's policy at one etcd revision (``Snapshot``).

A profile has tags and two ordered lists of rules. A rule is a dict with the
keys ``action`` (allow/deny, default allow), ``protocol`` (tcp, udp, icmp,
icmpv6), ``src_tag``/``dst_tag``, ``src_net``/``dst_net`` (CIDR),
``src_ports``/``dst_ports`` (ints or "N:M" ranges; tcp/udp only),
``icmp_type`` (0-255), ``icmp_code`` (needs icmp_type) and ``ip_version``
(4/6). Validation names the rule and the field that is wrong.

Semantics (shared by the dataplane and ``explain``), as in the original
system (Felix 1.x): an endpoint's profiles are tried in order, and within a
profile its rules in order; the first matching rule of all decides, and its
decision is final. ``allow`` accepts the packet at once (the next check is
the other end's policy); ``deny`` drops it at once, whatever later profiles
say. A packet no rule of any profile matches is dropped; an endpoint with no
profile accepts nothing. So a profile whose rules end with a catch-all
``deny`` (the default inbound rules) hides every profile after it: two such
profiles on one endpoint are not their union, only the first counts.

Cluster-wide settings (``PolicySettings``): what a node does with traffic
from its workloads to the node itself, once the workload's outbound policy
allowed it (``endpoint_to_host_action``, as Felix's
DefaultEndpointToHostAction): ``drop`` (the default: only pings to the host
pass), ``return`` (to the host's own INPUT rules) or ``accept``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections import defaultdict

from calicopy.datastore import keys
from calicopy.datastore.store import KV
from calicopy.errors import InvalidArgument
from calicopy.model.bgp import Node
from calicopy.model.endpoint import ACTIVE, Endpoint
from calicopy.model.ipam import Pool
from calicopy.model.record import BadRecord, RecordError, decode
from calicopy.model.record import field as record_field


class BadRule(InvalidArgument):
    """A profile name, tag or rule is malformed; the message says which and why."""

NAME_RE = re.compile(r"\w{1,30}\Z", re.ASCII)
TAG_RE = re.compile(r"\w+\Z", re.ASCII)
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6")
KEYS = {"action", "protocol", "src_tag", "dst_tag", "src_net", "dst_net", "src_ports",
        "dst_ports", "icmp_type", "icmp_code", "ip_version"}
INBOUND, OUTBOUND = "inbound", "outbound"
ENDPOINT_TO_HOST_ACTIONS = ("drop", "return", "accept")
DEFAULT_ENDPOINT_TO_HOST_ACTION = "drop"


@dataclasses.dataclass(frozen=True)
class Rule:
    action: str = "allow"
    protocol: str | None = None
    src_tag: str | None = None
    dst_tag: str | None = None
    src_net: str | None = None
    dst_net: str | None = None
    src_ports: tuple = ()
    dst_ports: tuple = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    ip_version: int | None = None

    @property
    def versions(self) -> tuple[int, ...]:
        """The IP versions this rule can match."""
        if self.ip_version:
            return (self.ip_version,)
        for net in (self.src_net, self.dst_net):
            if net:
                return (ipaddress.ip_network(net).version,)
        if self.protocol == "icmp":
            return (4,)
        if self.protocol == "icmpv6":
            return (6,)
        return (4, 6)

    def to_json(self) -> dict:
        out = {"action": self.action}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "action" and value not in (None, ()):
                out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    def describe(self) -> str:
        """One human line, as `rule show` prints it."""
        words = [self.action]
        if self.protocol:
            words.append(self.protocol)
        src = [f"tag {self.src_tag}"] if self.src_tag else []
        src += [self.src_net] if self.src_net else []
        src += [f"ports {_ports_text(self.src_ports)}"] if self.src_ports else []
        dst = [f"tag {self.dst_tag}"] if self.dst_tag else []
        dst += [self.dst_net] if self.dst_net else []
        dst += [f"ports {_ports_text(self.dst_ports)}"] if self.dst_ports else []
        if src:
            words += ["from"] + src
        if dst:
            words += ["to"] + dst
        if self.icmp_type is not None:
            words.append(f"type {self.icmp_type}" +
                         (f" code {self.icmp_code}" if self.icmp_code is not None else ""))
        if self.ip_version:
            words.append(f"(IPv{self.ip_version})")
        return " ".join(words)


def _ports_text(ports) -> str:
    return "[" + ", ".join(str(p) for p in ports) + "]"


@dataclasses.dataclass
class Profile:
    name: str
    tags: list[str]
    inbound: list[Rule]
    outbound: list[Rule]

    @classmethod
    def default(cls, name: str) -> "Profile":
        """What `profile add` creates: members reach each other, nothing else gets in."""
        return cls(name, [name], [Rule("allow", src_tag=name), Rule("deny")], [Rule("allow")])

    def rules_json(self) -> dict:
        return {"id": self.name,
                "inbound_rules": [r.to_json() for r in self.inbound],
                "outbound_rules": [r.to_json() for r in self.outbound]}

    def rules(self, direction: str) -> list[Rule]:
        return self.inbound if direction == INBOUND else self.outbound


def check_profile_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise BadRule("Profile names must be <30 character long and can only contain "
                      "numbers, letters and underscores.")
    return name


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise BadRule("Tag names can only contain letters, numbers and underscores.")
    return tag


def check_endpoint_to_host_action(value) -> str:
    """The setting's value, or BadRule naming the value given."""
    if value not in ENDPOINT_TO_HOST_ACTIONS:
        raise BadRule(f"Invalid endpoint-to-host action {value!r}: use "
                      f"{', '.join(ENDPOINT_TO_HOST_ACTIONS[:-1])} or "
                      f"{ENDPOINT_TO_HOST_ACTIONS[-1]}.")
    return value


def tags_from_json(data) -> list[str]:
    """A profile's tags record: a list of tag names."""
    if not isinstance(data, list):
        raise RecordError(f"{data!r} is not a list of tags")
    for tag in data:
        try:
            check_tag(tag)
        except BadRule:
            raise RecordError(f"{tag!r} is not a tag name") from None
    return list(data)


def endpoint_to_host_from_json(data) -> str:
    """The endpoint-to-host action record: a JSON string."""
    try:
        return check_endpoint_to_host_action(data)
    except BadRule as exc:
        raise RecordError(str(exc).rstrip(".")) from None


def applied_from_json(data) -> int:
    """A node's policy progress record: {"revision": N}."""
    return record_field(data, "revision", int)


def parse_rules(data, profile: str) -> tuple[list[Rule], list[Rule]]:
    """Validate a rules document; returns (inbound, outbound)."""
    if not isinstance(data, dict):
        raise BadRule("The rules must be a JSON object with inbound_rules and outbound_rules.")
    unknown = set(data) - {"id", "inbound_rules", "outbound_rules"}
    if unknown:
        raise BadRule(f"Unknown key(s) {', '.join(sorted(unknown))} in the rules of profile "
                      f"{profile}.")
    if "id" in data and data["id"] != profile:
        raise BadRule(f"Rules id '{data['id']}' does not match profile name '{profile}'.")
    lists = []
    for direction in (INBOUND, OUTBOUND):
        items = data.get(f"{direction}_rules", [])
        if not isinstance(items, list):
            raise BadRule(f"{direction}_rules must be a list.")
        lists.append([parse_rule(item, f"{direction} rule {i}")
                      for i, item in enumerate(items, 1)])
    return lists[0], lists[1]


def parse_rule(data, where: str) -> Rule:
    def bad(field, why):
        raise BadRule(f"Invalid {where}: field '{field}' {why}.")

    if not isinstance(data, dict):
        raise BadRule(f"Invalid {where}: a rule must be a JSON object.")
    for key in data:
        if key not in KEYS:
            bad(key, "is not a rule field (allowed: " + ", ".join(sorted(KEYS)) + ")")
    action = data.get("action", "allow")
    if action not in ("allow", "deny"):
        bad("action", f"must be allow or deny, not {action!r}")
    protocol = data.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        bad("protocol", f"must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    for field in ("src_tag", "dst_tag"):
        if field in data and (not isinstance(data[field], str) or not TAG_RE.match(data[field])):
            bad(field, "must be a tag name (letters, digits, underscores)")
    nets = {}
    for field in ("src_net", "dst_net"):
        if field in data:
            try:
                nets[field] = ipaddress.ip_network(data[field], strict=False)
            except (ValueError, TypeError):
                bad(field, f"is not a valid CIDR: {data[field]!r}")
    version = data.get("ip_version")
    if version is not None and version not in (4, 6):
        bad("ip_version", "must be 4 or 6")
    versions = {n.version for n in nets.values()}
    if len(versions) > 1:
        bad("dst_net", "is of another IP version than src_net")
    if version and versions and versions != {version}:
        bad(next(iter(nets)), f"is not an IPv{version} network but ip_version is {version}")
    if protocol == "icmp" and (version == 6 or versions == {6}):
        bad("protocol", "icmp is IPv4; use icmpv6 for IPv6")
    if protocol == "icmpv6" and (version == 4 or versions == {4}):
        bad("protocol", "icmpv6 is IPv6; use icmp for IPv4")
    ports = {}
    for field in ("src_ports", "dst_ports"):
        if field in data:
            if protocol not in ("tcp", "udp"):
                bad(field, "needs protocol tcp or udp")
            ports[field] = tuple(_port(p, field, bad) for p in _as_list(data[field], field, bad))
    icmp_type, icmp_code = data.get("icmp_type"), data.get("icmp_code")
    if icmp_type is not None:
        if protocol not in ("icmp", "icmpv6"):
            bad("icmp_type", "needs protocol icmp or icmpv6")
        if not isinstance(icmp_type, int) or not 0 <= icmp_type <= 255:
            bad("icmp_type", "must be 0-255")
    if icmp_code is not None:
        if icmp_type is None:
            bad("icmp_code", "needs icmp_type")
        if not isinstance(icmp_code, int) or not 0 <= icmp_code <= 255:
            bad("icmp_code", "must be 0-255")
    return Rule(action, protocol, data.get("src_tag"), data.get("dst_tag"),
                str(nets["src_net"]) if "src_net" in nets else None,
                str(nets["dst_net"]) if "dst_net" in nets else None,
                ports.get("src_ports", ()), ports.get("dst_ports", ()), icmp_type, icmp_code,
                version)


def _as_list(value, field, bad):
    if not isinstance(value, list) or not value:
        bad(field, "must be a non-empty list of ports or 'N:M' ranges")
    return value


def _port(value, field, bad):
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 65535:
            return value
    elif isinstance(value, str) and re.match(r"^\d+:\d+$", value):
        low, high = (int(x) for x in value.split(":"))
        if 0 <= low < high <= 65535:
            return f"{low}:{high}"
    bad(field, f"has an invalid port {value!r} (0-65535, or 'N:M' with N < M)")


@dataclasses.dataclass
class Snapshot:
    revision: int
    endpoints: list[Endpoint]
    profiles: dict[str, Profile]
    invalid_profiles: dict[str, str]          # name -> why it was ignored
    pools: list[dict]
    endpoint_to_host_action: str = DEFAULT_ENDPOINT_TO_HOST_ACTION
    nodes: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # addresses
    bad: dict[str, str] = dataclasses.field(default_factory=dict)   # key -> what is wrong

    @classmethod
    def from_kvs(cls, revision: int, kvs: list[KV]) -> "Snapshot":
        """The policy in ``kvs``. A malformed record is left out and listed in
        ``bad`` (key -> what is wrong): its workload fails closed, a bad
        setting keeps its default, a bad profile is ignored (its members
        fail closed); it never stops policy for everyone else."""
        endpoints, tags, rules, pools, nodes = [], {}, {}, [], {}
        to_host = DEFAULT_ENDPOINT_TO_HOST_ACTION
        bad: dict[str, str] = {}
        for kv in kvs:
            try:
                if kv.key == keys.ENDPOINT_TO_HOST_ACTION:
                    to_host = decode(kv, endpoint_to_host_from_json)
                elif keys.is_node(kv.key):
                    node = decode(kv, Node.from_json)
                    nodes[keys.parse_host(kv.key)] = tuple(
                        ip for ip in (node.ipv4, node.ipv6) if ip)
                elif keys.is_endpoint(kv.key):
                    ep = decode(kv, Endpoint.from_json)
                    if ep.state == ACTIVE:
                        endpoints.append(ep)
                elif kv.key.startswith(keys.PROFILES):
                    name, part = keys.parse_profile(kv.key)
                    if part == "tags":
                        tags[name] = decode(kv, tags_from_json)
                    elif part == "rules":
                        rules[name] = (kv.key, decode(kv, lambda data: data))
                elif kv.key.startswith(keys.pools_prefix()):
                    pools.append(decode(kv, Pool.from_json).to_json())
            except BadRecord as exc:
                bad[exc.key] = exc.why
        profiles, invalid = {}, {}
        for name in sorted(set(tags) & set(rules)):
            key, document = rules[name]
            try:
                inbound, outbound = parse_rules(document, name)
                profiles[name] = Profile(name, list(tags[name]), inbound, outbound)
            except BadRule as exc:   # a bad profile is ignored (fails closed), not fatal
                invalid[name] = str(exc)
                bad[key] = str(exc)
        endpoints.sort(key=lambda e: e.endpoint_id)
        return cls(revision, endpoints, profiles, invalid, pools, to_host, nodes, bad)

    def tag_members(self) -> dict[str, dict[int, set[str]]]:
        """tag -> IP version -> addresses of every endpoint carrying the tag."""
        members: dict[str, dict[int, set[str]]] = defaultdict(lambda: {4: set(), 6: set()})
        for ep in self.endpoints:
            for name in ep.profile_ids:
                profile = self.profiles.get(name)
                for tag in profile.tags if profile else ():
                    for ip in ep.ips:
                        members[tag][ipaddress.ip_address(ip).version].add(ip)
        return members

    def referenced_tags(self) -> set[str]:
        return {t for p in self.profiles.values() for r in p.inbound + p.outbound
                for t in (r.src_tag, r.dst_tag) if t}

    def endpoint_with_ip(self, ip: str) -> Endpoint | None:
        for ep in self.endpoints:
            if ip in ep.ips:
                return ep
        return None
