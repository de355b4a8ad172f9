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
                                                          "nat_outgoing": True}))
    return Snapshot.from_kvs(7, kvs)


def test_dataplane_is_per_endpoint_and_per_rule_not_per_member():
    web = Profile.default("WEB")
    eps = [endpoint(str(i % 10), "h1" if i < 5 else "h2", f"10.20.0.{i + 1}", ["WEB"])
           for i in range(8)]
    desired = compute(snapshot(web, endpoints=eps, bad=True), "h1")
    chains = desired.tables[4]["filter"]
    inbound = chains[profile_chain("WEB", "inbound")]
    # allow from tag WEB = mark + return; deny = return: 3 rules whatever the members.
    assert len(inbound) == 3 and tag_set("WEB", 4) in inbound[0]
    assert "profile WEB inbound rule 1" in inbound[0]
    assert desired.ipsets[tag_set("WEB", 4)].members == {f"10.20.0.{i + 1}" for i in range(8)}
    assert chains["cali-from-wl"][-1].endswith("-j DROP")       # fails closed
    assert len(chains["cali-from-wl"]) == 6                     # h1's five endpoints + drop
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
