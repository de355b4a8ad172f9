"""The whole cluster's policy at one etcd revision, and its verdict on a packet.

The node agent programs iptables and ipsets from a ``Snapshot``; ``explain``
evaluates the same snapshot in Python, rule by rule, with the semantics in
services.policy.rules, so the answer to "why was it blocked?" is the
dataplane's own answer, not a second opinion.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections import defaultdict

from calicopy.datastore import keys
from calicopy.datastore.store import KV
from services.endpoint.model import ACTIVE, Endpoint
from services.policy.rules import INBOUND, OUTBOUND, Profile, Rule, parse_rules

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Snapshot:
    revision: int
    endpoints: list[Endpoint]
    profiles: dict[str, Profile]
    invalid_profiles: dict[str, str]          # name -> why it was ignored
    pools: list[dict]

    @classmethod
    def from_kvs(cls, revision: int, kvs: list[KV]) -> "Snapshot":
        endpoints, tags, rules, pools = [], {}, {}, []
        for kv in kvs:
            try:
                if keys.is_endpoint(kv.key):
                    ep = Endpoint.from_json(kv.json())
                    if ep.state == ACTIVE:
                        endpoints.append(ep)
                elif kv.key.startswith(keys.PROFILES):
                    name, part = keys.parse_profile(kv.key)
                    (tags if part == "tags" else rules)[name] = kv.json()
                elif kv.key.startswith(keys.pools_prefix()):
                    pools.append(kv.json())
            except (ValueError, KeyError, TypeError) as exc:
                # A malformed record is left out (its workload fails closed);
                # it must not stop policy for everyone else.
                log.error("ignoring malformed record %s: %r", kv.key, exc)
        profiles, invalid = {}, {}
        for name in sorted(set(tags) & set(rules)):
            try:
                inbound, outbound = parse_rules(rules[name], name)
                profiles[name] = Profile(name, list(tags[name]), inbound, outbound)
            except Exception as exc:   # a bad profile is ignored (fails closed), not fatal
                invalid[name] = str(exc)
        endpoints.sort(key=lambda e: e.endpoint_id)
        return cls(revision, endpoints, profiles, invalid, pools)

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


@dataclasses.dataclass
class Packet:
    src: str
    dst: str
    protocol: str = "icmp"          # tcp, udp, icmp (icmpv6 for IPv6 pings)
    dst_port: int | None = None
    src_port: int | None = None
    icmp_type: int | None = None

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.src).version


def _in_ports(port: int | None, ports) -> bool:
    if port is None:
        return False
    for p in ports:
        if isinstance(p, int) and p == port:
            return True
        if isinstance(p, str):
            low, high = (int(x) for x in p.split(":"))
            if low <= port <= high:
                return True
    return False


def matches(rule: Rule, pkt: Packet, members) -> bool:
    if pkt.version not in rule.versions:
        return False
    if rule.protocol and rule.protocol != pkt.protocol:
        return False
    for tag, ip in ((rule.src_tag, pkt.src), (rule.dst_tag, pkt.dst)):
        if tag and ip not in members.get(tag, {}).get(pkt.version, set()):
            return False
    for net, ip in ((rule.src_net, pkt.src), (rule.dst_net, pkt.dst)):
        if net and ipaddress.ip_address(ip) not in ipaddress.ip_network(net):
            return False
    if rule.src_ports and not _in_ports(pkt.src_port, rule.src_ports):
        return False
    if rule.dst_ports and not _in_ports(pkt.dst_port, rule.dst_ports):
        return False
    if rule.icmp_type is not None:
        if pkt.icmp_type != rule.icmp_type:
            return False
    return True


@dataclasses.dataclass
class Decision:
    allowed: bool
    endpoint: Endpoint
    direction: str
    profile: str | None = None
    rule_index: int | None = None
    rule: Rule | None = None

    def describe(self) -> str:
        who = self.endpoint.workload_id
        if self.rule is not None:
            verb = "allowed" if self.allowed else "denied"
            return (f"{verb} by profile {self.profile} {self.direction} rule "
                    f"{self.rule_index}: {self.rule.describe()} [{who}]")
        if not self.endpoint.profile_ids:
            return f"denied: the endpoint has no profile, so it is isolated [{who}]"
        return (f"denied: no rule of profiles {', '.join(self.endpoint.profile_ids)} matched "
                f"[{who}]")


def decide(snapshot: Snapshot, ep: Endpoint, direction: str, pkt: Packet, members=None
           ) -> Decision:
    """The endpoint's verdict in one direction: the first allowing rule of any
    profile, in order; else the last deny that ended a profile; else no match."""
    members = snapshot.tag_members() if members is None else members
    last_deny = None
    for name in ep.profile_ids:
        profile = snapshot.profiles.get(name)
        if profile is None:
            continue
        for i, rule in enumerate(profile.rules(direction), 1):
            if matches(rule, pkt, members):
                if rule.action == "allow":
                    return Decision(True, ep, direction, name, i, rule)
                last_deny = Decision(False, ep, direction, name, i, rule)
                break
    return last_deny or Decision(False, ep, direction)


def explain(snapshot: Snapshot, pkt: Packet) -> tuple[bool, list[Decision], list[str]]:
    """(allowed, the decisions on the way, notes): the source endpoint's
    outbound rules, then the destination endpoint's inbound rules."""
    members = snapshot.tag_members()
    decisions, notes = [], []
    src, dst = snapshot.endpoint_with_ip(pkt.src), snapshot.endpoint_with_ip(pkt.dst)
    if src is None:
        notes.append(f"{pkt.src} is not a workload: no outbound policy applies to it.")
    if dst is None:
        notes.append(f"{pkt.dst} is not a workload: no inbound policy applies to it.")
    for ep, direction in ((src, OUTBOUND), (dst, INBOUND)):
        if ep is None:
            continue
        decision = decide(snapshot, ep, direction, pkt, members)
        decisions.append(decision)
        if not decision.allowed:
            return False, decisions, notes
    return True, decisions, notes
