"""The iptables chains and ipsets one node needs: the builders of each piece,
and ``compute``, all of them from a policy Snapshot.

Pure: no commands are run here. The layout (per IP version, filter table):

- ``cali-INPUT`` (first in INPUT) sends traffic from workload interfaces to
  ``cali-wl-to-host``; for IPv6 it first accepts the ICMPv6 neighbour
  discovery and MLD types workloads need (``ICMPV6_TO_HOST``), which come from
  link-local or unspecified sources that anti-spoofing would drop.
  ``cali-wl-to-host`` runs ``cali-from-wl`` (anti-spoofing, then the
  endpoint's outbound policy, which drops what it does not allow), accepts
  ICMP and ICMPv6 echo requests (a workload can ping its host), and ends with
  the cluster's endpoint-to-host action: DROP (the default), RETURN (to the
  host's own INPUT rules) or ACCEPT. So a workload reaches nothing else on its
  host (its listeners, BIRD) unless the operator says so, and never before its
  own policy has allowed it.
- ``cali-FORWARD`` (from FORWARD) sends traffic from workload interfaces to
  ``cali-from-wl`` and traffic to them to ``cali-to-wl``, then accepts it.
  Those dispatch by interface to per-endpoint chains and end in DROP, so an
  interface we do not know gets nothing (fail closed).
- ``cali-fw-<id>`` (from an endpoint): anti-spoofing comes first, before any
  conntrack ACCEPT, so a workload that takes another's address cannot ride
  that one's established flows: drop a wrong source MAC, go to
  ``cali-fp-<id>`` only for the endpoint's own source addresses, else drop.
  ``cali-fp-<id>`` drops INVALID, accepts ESTABLISHED and RELATED, then runs
  the endpoint's profiles' outbound chains in order and returns (allowed) as
  soon as one marks the packet; else drops.
- ``cali-tw-<id>`` (to an endpoint): drop INVALID, accept ESTABLISHED and
  RELATED, then the same for the profiles' inbound chains.
- ``cali-pi-<hash>`` / ``cali-po-<hash>``: one chain per profile and direction,
  each rule commented with the profile and rule number, so iptables-save and
  packet counters say which rule decided. ``allow`` is two rules (mark, then
  return to the endpoint chain, which returns at once: allowed); ``deny`` is
  one DROP, final whatever later profiles say (calicopy.model.policy).
- Every DROP that is a policy decision (a profile's deny rule, "no profile
  allowed it", a spoofed MAC or source, an unknown interface, the
  endpoint-to-host drop, IPv6's reverse-path check) is preceded by the same
  match sending the packet to NFLOG group ``NFLOG_GROUP``, rate-limited per
  rule (``DROP_LOG_LIMIT``), with a prefix ``<chain>/<n>:<hash>`` unique in its
  table and a comment holding the verdict in ``policy explain``'s words
  ("denied by profile P inbound rule 3: deny ..."). node.policy.drops reads
  them back: the prefix names the rule, iptables-save maps it to the comment.
  Allowed traffic never reaches an NFLOG rule unless it matches a deny
  rule's match, which it then also matches for the DROP; a denied packet
  costs one more rule and, past the limit, nothing more.
- IP-in-IP (protocol 4), while an IPv4 pool uses it: ``cali-INPUT`` ends by
  accepting it from the cluster's nodes (``cali4-hosts``, every node's IPv4
  address) and dropping it from anywhere else. (The node's decapsulator, see
  node.ipip, only takes it from the same nodes; the decapsulated packets then
  meet the endpoints' policy like any other: ``-o cali+``.)
- Tags are ipsets (``cali4-t-<hash>``, hash:ip), so a tag rule is one rule
  whatever the member count. In the nat table, ``cali-POSTROUTING``
  masquerades traffic from nat-outgoing pools to anywhere outside all pools.

Reverse-path filtering: IPv4 uses the kernel's strict ``rp_filter`` on each
workload interface (set by the endpoint service). IPv6 has no such sysctl,
so the raw table's ``cali-PREROUTING`` (first in PREROUTING) drops what
arrives on a ``cali`` interface from a source not routed back through it
(``-m rpfilter --invert``): raw, because it runs before conntrack and routing,
so a spoofed packet is gone before it can create or match a flow; the filter
chains above check the exact addresses besides.

Traffic from the host to its own workloads (OUTPUT) is not policed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re

from calicopy.model.endpoint import Endpoint
from calicopy.model.ipam import IPIP_ALWAYS, IPIP_NEVER
from calicopy.model.policy import INBOUND, OUTBOUND, Profile, Rule, Snapshot

MARK = "0x1000000"
ACCEPT_MARK = f"{MARK}/{MARK}"
PREFIX = "cali-"
SET_PREFIX = ("cali4-", "cali6-")
# The tables we keep chains in, per IP version.
TABLES = {4: ("filter", "nat"), 6: ("filter", "raw")}
HOOKS = {"filter": [("INPUT", "cali-INPUT"), ("FORWARD", "cali-FORWARD")],
         "nat": [("POSTROUTING", "cali-POSTROUTING")],
         "raw": [("PREROUTING", "cali-PREROUTING")]}
# Neighbour discovery and MLD that workloads must be able to send their host.
ICMPV6_TO_HOST = (130, 131, 132, 133, 135, 136)
# Echo requests (type 8 / ICMPv6 128, code 0): a workload can ping its host.
ECHO_TO_HOST = {4: "-p icmp -m icmp --icmp-type 8/0",
                6: "-p ipv6-icmp -m icmp6 --icmpv6-type 128/0"}
TO_HOST_TARGET = {"drop": "DROP", "return": "RETURN", "accept": "ACCEPT"}
# Denied packets are sampled to this NFLOG group (node.policy.drops listens).
NFLOG_GROUP = 20
# Per NFLOG rule: a flood of denied packets costs the listener this at most.
DROP_LOG_LIMIT = "-m limit --limit 100/sec --limit-burst 100"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def profile_chain(name: str, direction: str) -> str:
    return f"{PREFIX}p{'i' if direction == INBOUND else 'o'}-{_hash(name)}"


def tag_set(tag: str, version: int) -> str:
    return f"cali{version}-t-{_hash(tag)}"


def pool_set(kind: str, version: int) -> str:
    return f"cali{version}-pools-{kind}"


HOSTS_SET = "cali4-hosts"


def _ipip_in_use(pools: list[dict]) -> bool:
    return any(ipaddress.ip_network(p["cidr"]).version == 4 and
               (p.get("ipip_mode") or (IPIP_ALWAYS if p.get("ipip") else IPIP_NEVER)) !=
               IPIP_NEVER for p in pools)


_COMMENT_SAFE = re.compile(r"[^A-Za-z0-9 _.,:;/()\[\]+=@-]")


def _comment(text: str) -> str:
    """A comment iptables-restore will take: only plain characters (workload
    ids are free text), at most 200 bytes."""
    return f'-m comment --comment "{_COMMENT_SAFE.sub("?", text)[:200]}"'


def _drop(chain: str, rules: list[str], match: str, comment: str, verdict: str) -> None:
    """Append to ``rules`` (those of ``chain``) a DROP for ``match``, sampled
    first to NFLOG: prefix ``<chain>/<position>:<hash of verdict>``, comment
    ``verdict``."""
    lead = f"{match} " if match else ""
    # The verdict's hash lets the reader tell a prefix it knows from one a
    # rule update has since moved to another rule.
    ref = f"{chain}/{len(rules) + 1}:{_hash(verdict)[:8]}"
    rules.append(f"{lead}{DROP_LOG_LIMIT} {_comment(verdict)} -j NFLOG "
                 f"--nflog-group {NFLOG_GROUP} --nflog-prefix {ref}")
    rules.append(f"{lead}{comment} -j DROP")


@dataclasses.dataclass
class IpSet:
    name: str
    kind: str                 # hash:ip or hash:net
    version: int
    members: frozenset[str]


@dataclasses.dataclass
class Desired:
    """Per IP version: table -> chain -> rules; plus the ipsets."""
    tables: dict[int, dict[str, dict[str, list[str]]]]
    ipsets: dict[str, IpSet]


def rule_matches(rule: Rule, version: int) -> list[str]:
    """The iptables match clauses of a rule (several when ports must be split)."""
    parts = []
    if rule.protocol:
        parts.append(f"-p {'ipv6-icmp' if rule.protocol == 'icmpv6' else rule.protocol}")
    if rule.src_net:
        parts.append(f"-s {rule.src_net}")
    if rule.dst_net:
        parts.append(f"-d {rule.dst_net}")
    if rule.src_tag:
        parts.append(f"-m set --match-set {tag_set(rule.src_tag, version)} src")
    if rule.dst_tag:
        parts.append(f"-m set --match-set {tag_set(rule.dst_tag, version)} dst")
    if rule.icmp_type is not None:
        value = str(rule.icmp_type) + (f"/{rule.icmp_code}" if rule.icmp_code is not None
                                       else "")
        parts.append(f"-m icmp --icmp-type {value}" if version == 4 else
                     f"-m icmp6 --icmpv6-type {value}")
    base = " ".join(parts)
    port_sets = [(flag, _chunks(ports)) for flag, ports in
                 (("--sports", rule.src_ports), ("--dports", rule.dst_ports)) if ports]
    if not port_sets:
        return [base]
    clauses = [base]
    for flag, chunks in port_sets:
        clauses = [f"{c} -m multiport {flag} {chunk}".strip() for c in clauses
                   for chunk in chunks]
    return clauses


def _chunks(ports) -> list[str]:
    """multiport takes 15 ports per rule, a range counting as two."""
    chunks, current, weight = [], [], 0
    for p in ports:
        w = 2 if isinstance(p, str) else 1
        if weight + w > 15:
            chunks.append(current)
            current, weight = [], 0
        current.append(str(p))
        weight += w
    chunks.append(current)
    return [",".join(c) for c in chunks]


def _profile_rules(name: str, direction: str, rules: list[Rule], version: int) -> list[str]:
    out: list[str] = []
    chain = profile_chain(name, direction)
    for i, rule in enumerate(rules, 1):
        if version not in rule.versions:
            continue
        text = f"profile {name} {direction} rule {i}: {rule.describe()}"
        comment = _comment(text)
        for match in rule_matches(rule, version):
            lead = f"{match} " if match else ""
            if rule.action == "allow":
                out.append(f"{lead}{comment} -j MARK --set-xmark {ACCEPT_MARK}")
                out.append(f"-m mark --mark {ACCEPT_MARK} -j RETURN")
            else:       # final: no later profile is tried
                _drop(chain, out, match, comment, f"denied by {text}")
    return out


def has_version(ep: Endpoint, version: int) -> bool:
    return any(ipaddress.ip_address(ip).version == version for ip in ep.ips)


def endpoint_chains(ep: Endpoint, version: int, profiles) -> dict[str, list[str]]:
    """The chains of one local endpoint; ``profiles`` holds the valid profiles
    (an endpoint's jump to a profile that is not there is left out)."""
    short = ep.endpoint_id[:11]
    fw, fp, tw = f"{PREFIX}fw-{short}", f"{PREFIX}fp-{short}", f"{PREFIX}tw-{short}"
    who = f"{ep.orchestrator} {ep.workload_id}"
    conntrack = ["-m conntrack --ctstate INVALID -j DROP",
                 "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    ips = [ip for ip in ep.ips if ipaddress.ip_address(ip).version == version]
    # Anti-spoofing before conntrack: an established flow is only ridden by
    # the endpoint that owns its address.
    from_chain: list[str] = []
    _drop(fw, from_chain, f"-m mac ! --mac-source {ep.mac}", _comment(f"{who}: spoofed MAC"),
          "denied: spoofed MAC")
    from_chain += [f"-s {ip}/{32 if version == 4 else 128} -g {fp}" for ip in ips]
    _drop(fw, from_chain, "", _comment(f"{who}: source address is not its own"),
          "denied: spoofed source address")
    # In explain's words (services.policy.explain.Decision.describe).
    none = ("denied: the endpoint has no profile, so it is isolated" if not ep.profile_ids else
            f"denied: no rule of profiles {', '.join(ep.profile_ids)} matched")

    def jumps(chain, direction):
        rules = list(conntrack) + [f"-j MARK --set-xmark 0x0/{MARK}"]
        for name in ep.profile_ids:
            if name in profiles:
                rules += [f"-j {profile_chain(name, direction)}",
                          f"-m mark --mark {ACCEPT_MARK} -j RETURN"]
        _drop(chain, rules, "", _comment(f"{who}: no profile allowed it ({direction})"),
              f"{none} ({direction})")
        return rules
    return {fw: from_chain, fp: jumps(fp, OUTBOUND), tw: jumps(tw, INBOUND)}


def profile_chains(profile: Profile, version: int) -> dict[str, list[str]]:
    """A profile's two chains (inbound, outbound) for one IP version."""
    return {profile_chain(profile.name, d): _profile_rules(profile.name, d,
                                                           profile.rules(d), version)
            for d in (INBOUND, OUTBOUND)}


def global_sets(pools: list[dict], nodes: dict[str, tuple[str, ...]]) -> dict[str, IpSet]:
    """The sets that do not depend on tags: the IPv4 pools (all, and those
    that masquerade) and, while IP-in-IP is in use, the cluster's nodes."""
    v4 = [p for p in pools if ipaddress.ip_network(p["cidr"]).version == 4]
    every, masq = pool_set("all", 4), pool_set("masq", 4)
    sets = {every: IpSet(every, "hash:net", 4, frozenset(p["cidr"] for p in v4)),
            masq: IpSet(masq, "hash:net", 4,
                        frozenset(p["cidr"] for p in v4 if p.get("nat_outgoing")))}
    if _ipip_in_use(pools):
        sets[HOSTS_SET] = IpSet(HOSTS_SET, "hash:ip", 4, frozenset(
            ip for ips in nodes.values() for ip in ips if "." in ip))
    return sets


def global_chains(version: int, local: list[Endpoint], pools: list[dict],
                  action: str) -> dict[str, dict[str, list[str]]]:
    """table -> chain -> rules of the chains that are not an endpoint's or a
    profile's: hooks' targets and dispatch. ``local`` are this node's
    endpoints with an address of ``version``, in endpoint-id order."""
    chains: dict[str, list[str]] = {}
    chains[f"{PREFIX}INPUT"] = [
        f"-i cali+ -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT"
        for t in (ICMPV6_TO_HOST if version == 6 else ())]
    chains[f"{PREFIX}INPUT"].append(f"-i cali+ -j {PREFIX}wl-to-host")
    if version == 4 and _ipip_in_use(pools):
        chains[f"{PREFIX}INPUT"] += [
            f"-p 4 -m set --match-set {HOSTS_SET} src "
            f"{_comment('IP-in-IP from the cluster nodes')} -j ACCEPT",
            f"-p 4 {_comment('IP-in-IP from anywhere else')} -j DROP"]
    to_host = f"{PREFIX}wl-to-host"
    chains[to_host] = [
        f"-j {PREFIX}from-wl",
        f"{ECHO_TO_HOST[version]} {_comment('a workload can ping its host')} -j ACCEPT"]
    if action == "drop":
        _drop(to_host, chains[to_host], "", _comment("endpoint-to-host action drop"),
              "denied: endpoint-to-host action drop (to its own host)")
    else:
        chains[to_host].append(
            f"{_comment(f'endpoint-to-host action {action}')} -j {TO_HOST_TARGET[action]}")
    chains[f"{PREFIX}FORWARD"] = [f"-i cali+ -j {PREFIX}from-wl",
                                  f"-o cali+ -j {PREFIX}to-wl",
                                  "-i cali+ -j ACCEPT", "-o cali+ -j ACCEPT"]
    # An endpoint without addresses of this version gets no chains in it:
    # the dispatch chains' final DROP covers it.
    for name, flag, kind in (("from-wl", "-i", "fw"), ("to-wl", "-o", "tw")):
        chain = f"{PREFIX}{name}"
        chains[chain] = [f"{flag} {ep.host_interface} -g {PREFIX}{kind}-{ep.endpoint_id[:11]}"
                         for ep in local]
        _drop(chain, chains[chain], "", _comment("unknown workload interface"),
              "denied: unknown workload interface")
    if version == 6:
        raw: list[str] = []
        _drop(f"{PREFIX}PREROUTING", raw, "-i cali+ -m rpfilter --invert",
              _comment("source not routed via its interface"),
              "denied: spoofed source (not routed via its interface)")
        return {"filter": chains, "raw": {f"{PREFIX}PREROUTING": raw}}
    masq = any(p.get("nat_outgoing") for p in pools
               if ipaddress.ip_network(p["cidr"]).version == 4)
    every, masq_set = pool_set("all", 4), pool_set("masq", 4)
    return {"filter": chains, "nat": {f"{PREFIX}POSTROUTING": [
        f"-m set --match-set {masq_set} src -m set ! --match-set {every} dst "
        f"{_comment('nat-outgoing pools')} -j MASQUERADE"] if masq else []}}


def compute(snapshot: Snapshot, node: str) -> Desired:
    """Everything at once, from a snapshot (the agent keeps the same, piece
    by piece: node.policy.desired)."""
    local = [ep for ep in snapshot.endpoints if ep.node == node and ep.mac]
    members = snapshot.tag_members()
    ipsets: dict[str, IpSet] = {}
    tables: dict[int, dict[str, dict[str, list[str]]]] = {}
    for version in TABLES:
        for tag in snapshot.referenced_tags():
            name = tag_set(tag, version)
            ipsets[name] = IpSet(name, "hash:ip", version,
                                 frozenset(members.get(tag, {}).get(version, set())))
        mine = [ep for ep in local if has_version(ep, version)]
        tables[version] = global_chains(version, mine, snapshot.pools,
                                        snapshot.endpoint_to_host_action)
        chains = tables[version]["filter"]
        used = {name for ep in mine for name in ep.profile_ids if name in snapshot.profiles}
        for name in sorted(used):
            chains.update(profile_chains(snapshot.profiles[name], version))
        for ep in mine:
            chains.update(endpoint_chains(ep, version, snapshot.profiles))
    ipsets.update(global_sets(snapshot.pools, snapshot.nodes))
    return Desired(tables, ipsets)
