"""The cluster policy's verdict on a packet.

The node agents program iptables and ipsets from a ``Snapshot``
(calicopy.model.policy); ``explain`` evaluates the same snapshot in Python,
rule by rule, with the semantics stated there, so the answer to "why was it
blocked?" is the dataplane's own answer, not a second opinion.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from calicopy.model.endpoint import Endpoint
from calicopy.model.policy import INBOUND, OUTBOUND, Rule, Snapshot


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
