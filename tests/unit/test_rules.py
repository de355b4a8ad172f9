"""Rule validation, the dataplane computed from a snapshot, and explain."""

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import KV
from calicopy.errors import InvalidArgument
from node.policy.dataplane import compute, profile_chain, tag_set
from calicopy.model.endpoint import ACTIVE, Endpoint
from services.policy.explain import Packet, explain
from calicopy.model.policy import Profile, Rule, Snapshot, parse_rule, parse_rules


def test_default_profile_is_the_seed_one():
    assert Profile.default("WEB").rules_json() == {
        "id": "WEB", "inbound_rules": [{"action": "allow", "src_tag": "WEB"},
                                       {"action": "deny"}],
        "outbound_rules": [{"action": "allow"}]}


@pytest.mark.parametrize("rule,message", [
    ({"action": "maybe"}, "field 'action' must be allow or deny"),
    ({"protocol": "sctp"}, "field 'protocol' must be one of"),
    ({"dst_ports": [80]}, "field 'dst_ports' needs protocol tcp or udp"),
    ({"protocol": "tcp", "dst_ports": [70000]}, "invalid port 70000"),
    ({"protocol": "tcp", "dst_ports": ["90:80"]}, "invalid port '90:80'"),
    ({"protocol": "icmp", "icmp_code": 1}, "field 'icmp_code' needs icmp_type"),
    ({"protocol": "icmp", "icmp_type": 300}, "field 'icmp_type' must be 0-255"),
    ({"icmp_type": 8}, "field 'icmp_type' needs protocol icmp or icmpv6"),
    ({"src_net": "10.0.0.0/8", "dst_net": "fd00::/8"}, "another IP version"),
    ({"src_net": "10.0.0.0/8", "ip_version": 6}, "not an IPv6 network"),
    ({"protocol": "icmp", "ip_version": 6}, "icmp is IPv4"),
    ({"src_tag": "bad-tag"}, "field 'src_tag' must be a tag name"),
    ({"colour": "blue"}, "field 'colour' is not a rule field"),
])
def test_invalid_rules_name_the_field(rule, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_rule(rule, "inbound rule 3")


def test_rules_document_checks():
    with pytest.raises(InvalidArgument, match="does not match profile name"):
        parse_rules({"id": "B"}, "A")
    with pytest.raises(InvalidArgument, match="Unknown key"):
        parse_rules({"inbound": []}, "A")
    inbound, outbound = parse_rules({"inbound_rules": [{"protocol": "tcp",
                                                        "dst_ports": [80, "8000:8080"]}]}, "A")
    assert inbound[0].dst_ports == (80, "8000:8080") and outbound == []


def kv(key, value):
    import json
    return KV(key, json.dumps(value), 1)


def endpoint(ep_id, node, ip, profiles, mac="02:00:00:00:00:01"):
    ep = Endpoint(ep_id * 32, node, "netns", f"w{ep_id}", "eth0", "/x", ACTIVE, mac)
    ep.set_ips([ip])
    ep.profile_ids = profiles
    return ep


def snapshot(*profiles, endpoints=(), bad=None):
    kvs = []
    for p in profiles:
        kvs += [kv(keys.profile_tags(p.name), p.tags), kv(keys.profile_rules(p.name),
                                                           p.rules_json())]
    if bad:
        kvs += [kv(keys.profile_tags("BAD"), ["BAD"]),
                kv(keys.profile_rules("BAD"), {"inbound_rules": [{"nope": 1}]})]
    for ep in endpoints:
        kvs.append(kv(keys.endpoint(ep.node, "netns", ep.workload_id, ep.endpoint_id),
                      ep.to_json()))
    kvs.append(kv(keys.pools_prefix(4) + "10.20.0.0-16", {"cidr": "10.20.0.0/16",
                                                          "block_size": 26,
                                                          "nat_outgoing": True}))
    return Snapshot.from_kvs(7, kvs)


def acting(rules: list[str]) -> list[str]:
    """The rules that decide, without the NFLOG samples before each DROP."""
    return [r for r in rules if "-j NFLOG" not in r]


def test_dataplane_is_per_endpoint_and_per_rule_not_per_member():
    web = Profile.default("WEB")
    eps = [endpoint(str(i % 10), "h1" if i < 5 else "h2", f"10.20.0.{i + 1}", ["WEB"])
           for i in range(8)]
    desired = compute(snapshot(web, endpoints=eps, bad=True), "h1")
    chains = desired.tables[4]["filter"]
    inbound = acting(chains[profile_chain("WEB", "inbound")])
    # allow from tag WEB = mark + return; deny = drop: 3 rules whatever the members.
    assert len(inbound) == 3 and tag_set("WEB", 4) in inbound[0]
    assert "profile WEB inbound rule 1" in inbound[0]
    assert desired.ipsets[tag_set("WEB", 4)].members == {f"10.20.0.{i + 1}" for i in range(8)}
    assert chains["cali-from-wl"][-1].endswith("-j DROP")       # fails closed
    assert len(acting(chains["cali-from-wl"])) == 6             # h1's five endpoints + drop
    fw = chains["cali-fw-" + "0" * 11]
    assert any("--mac-source 02:00:00:00:00:01" in r for r in fw)
    assert "-s 10.20.0.1/32 -g cali-fp-00000000000" in fw
    masq = desired.tables[4]["nat"]["cali-POSTROUTING"][0]
    assert "MASQUERADE" in masq


def test_explain_names_the_deciding_rule():
    web, db = Profile.default("WEB"), Profile.default("DB")
    db.inbound.insert(0, Rule("allow", "tcp", src_tag="WEB", dst_ports=(5432,)))
    eps = [endpoint("1", "h1", "10.20.0.1", ["WEB"]), endpoint("2", "h2", "10.20.0.2", ["DB"]),
           endpoint("3", "h2", "10.20.0.3", [])]
    snap = snapshot(web, db, endpoints=eps)
    allowed, steps, _ = explain(snap, Packet("10.20.0.1", "10.20.0.2", "tcp", 5432))
    assert allowed and steps[-1].profile == "DB" and steps[-1].rule_index == 1
    allowed, steps, _ = explain(snap, Packet("10.20.0.1", "10.20.0.2", "tcp", 22))
    assert not allowed and (steps[-1].profile, steps[-1].rule_index) == ("DB", 3)
    allowed, steps, _ = explain(snap, Packet("10.20.0.1", "10.20.0.3", "icmp", icmp_type=8))
    assert not allowed and "no profile, so it is isolated" in steps[-1].describe()
    allowed, _, notes = explain(snap, Packet("192.0.2.1", "10.20.0.1", "icmp", icmp_type=8))
    assert not allowed and "192.0.2.1 is not a workload" in notes[0]


def test_deny_is_a_drop_and_allow_returns_marked():
    web = Profile("WEB", ["WEB"], [Rule("deny", "tcp", dst_ports=(22,)), Rule("allow")], [])
    chains = compute(snapshot(web, endpoints=[endpoint("1", "h1", "10.20.0.1", ["WEB"])]),
                     "h1").tables[4]["filter"]
    inbound = acting(chains[profile_chain("WEB", "inbound")])
    assert inbound[0].startswith("-p tcp -m multiport --dports 22 ")
    assert inbound[0].endswith("-j DROP")
    assert inbound[1].endswith("-j MARK --set-xmark 0x1000000/0x1000000")
    assert inbound[2] == "-m mark --mark 0x1000000/0x1000000 -j RETURN"
    assert not any(r.endswith("-j RETURN") and "profile WEB" in r for r in inbound)


def test_anti_spoofing_comes_before_any_conntrack_accept():
    ep = endpoint("1", "h1", "10.20.0.1", ["WEB"])
    for version, ip in ((4, "10.20.0.1"), (6, "fd80::1")):
        ep.set_ips([ip])
        chains = compute(snapshot(Profile.default("WEB"), endpoints=[ep]),
                         "h1").tables[version]["filter"]
        fw, fp = acting(chains["cali-fw-" + "1" * 11]), chains["cali-fp-" + "1" * 11]
        assert "--mac-source 02:00:00:00:00:01" in fw[0] and fw[0].endswith("-j DROP")
        assert fw[1] == f"-s {ip}/{32 if version == 4 else 128} -g cali-fp-11111111111"
        assert fw[2].endswith("-j DROP") and len(fw) == 3
        assert not any("conntrack" in rule for rule in fw)
        assert fp[:2] == ["-m conntrack --ctstate INVALID -j DROP",
                          "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]


def settings(action):
    return [kv(keys.ENDPOINT_TO_HOST_ACTION, action)] if action is not None else []


@pytest.mark.parametrize("stored,target", [(None, "DROP"), ("drop", "DROP"),
                                           ("return", "RETURN"), ("accept", "ACCEPT"),
                                           ("allow", "DROP"), ({"x": 1}, "DROP")])
def test_workload_to_host_after_its_policy_then_the_action(stored, target):
    snap = Snapshot.from_kvs(3, settings(stored))
    assert snap.endpoint_to_host_action == ("drop" if target == "DROP" else stored)
    desired = compute(snap, "h1")
    v4, v6 = desired.tables[4]["filter"], desired.tables[6]["filter"]
    assert v4["cali-INPUT"] == ["-i cali+ -j cali-wl-to-host"]
    # IPv6 neighbour discovery first: its sources are link-local or unspecified.
    assert v6["cali-INPUT"][:-1] == [
        f"-i cali+ -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT"
        for t in (130, 131, 132, 133, 135, 136)]
    assert v6["cali-INPUT"][-1] == "-i cali+ -j cali-wl-to-host"
    for chains, echo in ((v4, "-p icmp -m icmp --icmp-type 8/0 "),
                         (v6, "-p ipv6-icmp -m icmp6 --icmpv6-type 128/0 ")):
        to_host = acting(chains["cali-wl-to-host"])
        assert to_host[0] == "-j cali-from-wl"          # anti-spoofing, outbound policy
        assert to_host[1].startswith(echo) and to_host[1].endswith("-j ACCEPT")
        assert to_host[2].endswith(f"-j {target}") and len(to_host) == 3
    raw = acting(desired.tables[6]["raw"]["cali-PREROUTING"])
    assert raw[0].startswith("-i cali+ -m rpfilter --invert ") and raw[0].endswith("-j DROP")
    assert "raw" not in desired.tables[4]


def test_first_matching_rule_of_the_profiles_decides_for_good():
    deny22 = Profile("B", ["B"], [Rule("deny", "tcp", dst_ports=(22,))], [Rule("allow")])
    allow = Profile("A", ["A"], [Rule("allow")], [Rule("allow")])
    eps = [endpoint("1", "h1", "10.20.0.1", ["B", "A"]),
           endpoint("2", "h2", "10.20.0.2", ["A"])]
    snap = snapshot(deny22, allow, endpoints=eps)
    allowed, steps, _ = explain(snap, Packet("10.20.0.2", "10.20.0.1", "tcp", 22))
    assert not allowed and (steps[-1].profile, steps[-1].rule_index) == ("B", 1)
    assert steps[-1].describe().startswith("denied by profile B inbound rule 1: deny tcp")
    allowed, steps, _ = explain(snap, Packet("10.20.0.2", "10.20.0.1", "tcp", 80))
    assert allowed and (steps[-1].profile, steps[-1].rule_index) == ("A", 1)
    # The other order: A's allow comes first and decides.
    eps[0].profile_ids = ["A", "B"]
    allowed, steps, _ = explain(snapshot(deny22, allow, endpoints=eps),
                                Packet("10.20.0.2", "10.20.0.1", "tcp", 22))
    assert allowed and steps[-1].profile == "A"


def test_two_default_profiles_are_not_a_union():
    a, b = Profile.default("A"), Profile.default("B")
    eps = [endpoint("1", "h1", "10.20.0.1", ["A", "B"]), endpoint("2", "h1", "10.20.0.2", ["A"]),
           endpoint("3", "h1", "10.20.0.3", ["B"])]
    snap = snapshot(a, b, endpoints=eps)
    assert explain(snap, Packet("10.20.0.2", "10.20.0.1", icmp_type=8, icmp_code=0))[0]
    allowed, steps, _ = explain(snap, Packet("10.20.0.3", "10.20.0.1", icmp_type=8,
                                             icmp_code=0))
    assert not allowed and (steps[-1].profile, steps[-1].rule_index) == ("A", 2)
    # Without a catch-all deny, profiles add up.
    a.inbound, b.inbound = a.inbound[:1], b.inbound[:1]
    snap = snapshot(a, b, endpoints=eps)
    for src in ("10.20.0.2", "10.20.0.3"):
        assert explain(snap, Packet(src, "10.20.0.1", icmp_type=8, icmp_code=0))[0]


@pytest.mark.parametrize("rule,matches_echo", [
    ({"protocol": "icmp", "icmp_type": 8}, True),
    ({"protocol": "icmp", "icmp_type": 8, "icmp_code": 0}, True),
    ({"protocol": "icmp", "icmp_type": 8, "icmp_code": 1}, False),
    ({"protocol": "icmp", "icmp_type": 3, "icmp_code": 0}, False),
    ({"protocol": "icmp"}, True),
])
def test_explain_matches_icmp_type_and_code_as_iptables_does(rule, matches_echo):
    profile = Profile("P", ["P"], [parse_rule({"action": "deny", **rule}, "inbound rule 1"),
                                   Rule("allow")], [Rule("allow")])
    eps = [endpoint("1", "h1", "10.20.0.1", ["P"]), endpoint("2", "h2", "10.20.0.2", ["P"])]
    snap = snapshot(profile, endpoints=eps)
    allowed, steps, _ = explain(snap, Packet("10.20.0.2", "10.20.0.1", icmp_type=8,
                                             icmp_code=0))
    assert allowed is not matches_echo
    assert steps[-1].rule_index == (1 if matches_echo else 2)
    # What iptables is given: a type matches any code, type/code that code only.
    rendered = compute(snap, "h1").tables[4]["filter"][profile_chain("P", "inbound")][0]
    if "icmp_type" in rule:
        code = f"/{rule['icmp_code']}" if "icmp_code" in rule else " "
        assert f"-m icmp --icmp-type {rule['icmp_type']}{code}" in rendered


def test_explain_to_the_sources_own_host_follows_the_action():
    eps = [endpoint("1", "h1", "10.20.0.1", ["WEB"])]
    node = kv(keys.node("h1"), {"name": "h1", "ipv4": "172.30.0.2", "ipv6": ""})
    for action, tcp_allowed in (("drop", False), ("return", True), ("accept", True)):
        snap = Snapshot.from_kvs(5, _kvs(eps) + [node] + settings(action))
        allowed, _, notes = explain(snap, Packet("10.20.0.1", "172.30.0.2", "tcp", 22))
        assert allowed is tcp_allowed and f"action is {action}" in notes[-1]
        allowed, _, notes = explain(snap, Packet("10.20.0.1", "172.30.0.2", icmp_type=8,
                                                 icmp_code=0))
        assert allowed and "may always ping its host" in notes[-1]


def _kvs(eps):
    web = Profile.default("WEB")
    return [kv(keys.profile_tags("WEB"), web.tags), kv(keys.profile_rules("WEB"),
                                                       web.rules_json())] + \
        [kv(keys.endpoint(ep.node, "netns", ep.workload_id, ep.endpoint_id), ep.to_json())
         for ep in eps]
