"""The cluster policy's verdict on a packet.

The node agents program iptables and ipsets from a ``Snapshot``
(calicopy.model.policy); ``explain`` evaluates the same snapshot in Python,
rule by rule, with the semantics stated there (the first matching rule of
the endpoint's profiles, in order, decides for good), so the answer to "why
was it blocked?" is the dataplane's own answer, not a second opinion. A
packet from a workload to an address of its own node (as registered) also
meets the node's endpoint-to-host action, as in node/policy/dataplane.py.
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
    icmp_type: int | None = None    # an echo request is 8 (ICMPv6: 128), code 0
    icmp_code: int | None = None

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
    if rule.icmp_type is not None and pkt.icmp_type != rule.icmp_type:
        return False
    if rule.icmp_code is not None and pkt.icmp_code != rule.icmp_code:
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
    """The endpoint's verdict in one direction: the first matching rule of
    its profiles, in order, whatever its action; no match denies."""
    members = snapshot.tag_members() if members is None else members
    for name in ep.profile_ids:
        profile = snapshot.profiles.get(name)
        if profile is None:
            continue
        for i, rule in enumerate(profile.rules(direction), 1):
            if matches(rule, pkt, members):
                return Decision(rule.action == "allow", ep, direction, name, i, rule)
    return Decision(False, ep, direction)


def _is_echo_request(pkt: Packet) -> bool:
    return (pkt.protocol, pkt.icmp_type, pkt.icmp_code) in (("icmp", 8, 0),
                                                            ("icmpv6", 128, 0))


def explain(snapshot: Snapshot, pkt: Packet) -> tuple[bool, list[Decision], list[str]]:
    """(allowed, the decisions on the way, notes): the source endpoint's
    outbound rules, then the destination endpoint's inbound rules, or, to the
    source's own node, the node's endpoint-to-host action."""
    members = snapshot.tag_members()
    decisions, notes = [], []
    src, dst = snapshot.endpoint_with_ip(pkt.src), snapshot.endpoint_with_ip(pkt.dst)
    to_own_host = src is not None and dst is None and \
        pkt.dst in snapshot.nodes.get(src.node, ())
    if src is None:
        notes.append(f"{pkt.src} is not a workload: no outbound policy applies to it.")
    if dst is None and not to_own_host:
        notes.append(f"{pkt.dst} is not a workload: no inbound policy applies to it." + (
            f" (Were it an address of {src.node}, the source's own host, the endpoint-to-host "
            f"action, {snapshot.endpoint_to_host_action}, would decide.)" if src else ""))
    for ep, direction in ((src, OUTBOUND), (dst, INBOUND)):
        if ep is None:
            continue
        decision = decide(snapshot, ep, direction, pkt, members)
        decisions.append(decision)
        if not decision.allowed:
            return False, decisions, notes
    if to_own_host:
        action = snapshot.endpoint_to_host_action
        if _is_echo_request(pkt):
            notes.append(f"{pkt.dst} is the address of node {src.node}, the source's own "
                         "host: a workload may always ping its host.")
            return True, decisions, notes
        notes.append(f"{pkt.dst} is the address of node {src.node}, the source's own host: "
                     f"the endpoint-to-host action is {action}" +
                     (", so the host's own INPUT rules decide." if action == "return" else "."))
        return action != "drop", decisions, notes
    return True, decisions, notes
