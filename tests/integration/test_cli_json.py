"""`-o json` of every show/check/explain command that needs no node, against the
real IPAM, BGP and policy services and etcd: the document parses, has the
documented kind, and says what the table says (one test per command).

The commands that need a running node (status, container show, explain of
containers) are in tests/system/test_cli_json.py.
"""

import json
from ipaddress import ip_network

import pytest

from calico.bgp.v1 import bgp_pb2, bgp_pb2_grpc
from calicopy import rpc
from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.endpoint import ACTIVE, Endpoint, endpoint_id
from tests import cli
from tests.cli import document, fails, ok, tables


@pytest.fixture
def ctl(ipam_addr, bgp_server, policy_server, etcd):
    """calicoctl with every cluster service and etcd."""
    env = {"CALICO_IPAM_ADDR": ipam_addr, "CALICO_BGP_ADDR": bgp_server[0],
           "CALICO_POLICY_ADDR": policy_server[0], "ETCD_ENDPOINTS": etcd}
    return lambda *args, input=None: cli.calicoctl(*args, input=input, env=env)


def both(ctl, *args, kind, exit_code=0):
    """(the table output, the JSON document) of one command."""
    text = ctl(*args)
    assert text.returncode == exit_code, text.stdout + text.stderr
    return text.stdout, document(ctl(*args, "-o", "json"), kind, exit_code)


def register(bgp_server, name, ipv4, ipv6="", as_num=0):
    with rpc.channel(bgp_server[0]) as ch:
        bgp_pb2_grpc.BgpServiceStub(ch).RegisterNode(bgp_pb2.RegisterNodeRequest(
            node=bgp_pb2.Node(name=name, ipv4=ipv4, ipv6=ipv6, as_num=as_num)), timeout=10)


def add_endpoint(store, node, workload, ipv4=(), ipv6=(), profiles=(), state=ACTIVE):
    """An endpoint record as a node's endpoint service writes it."""
    ep_id = endpoint_id(node, "netns", workload, "eth0")
    ep = Endpoint(ep_id, node, "netns", workload, "eth0", f"/var/run/netns/{workload}", state,
                  "02:00:00:00:00:01", ipv4_nets=list(ipv4), ipv6_nets=list(ipv6),
                  profile_ids=list(profiles))
    assert store.commit(Txn().create(keys.endpoint(node, "netns", workload, ep_id),
                                     ep.to_json()))
    return ep_id


def test_pool_show(ctl):
    ok(ctl("pool", "add", "10.20.0.0/16", "--nat-outgoing", "--ipip=cross-subnet"))
    ok(ctl("pool", "add", "10.30.0.0/24", "--block-size=28"))
    ok(ctl("pool", "add", "fd80:24e2:f998:72d6::/64", "--block-size=120"))
    text, doc = both(ctl, "pool", "show", kind="PoolList")
    v4, v6 = tables(text)
    assert [(r["IPv4 CIDR"], r["Block size"], r["Options"], r["IP-in-IP"]) for r in v4] + \
        [(r["IPv6 CIDR"], r["Block size"], r["Options"], r["IP-in-IP"]) for r in v6] == \
        [(p["cidr"], f"/{p['block_size']}",
          ",".join(["nat-outgoing"] * p["nat_outgoing"] +
                   [f"ipip={p['ipip_mode']}"] * (p["ipip_mode"] != "never")),
          p["ipip_mode"]) for p in doc["pools"]]
    assert doc["pools"][0] == {"cidr": "10.20.0.0/16", "ip_version": 4, "block_size": 26,
                               "nat_outgoing": True, "ipip_mode": "cross-subnet",
                               "disabled": False}
    assert [p["ip_version"] for p in doc["pools"]] == [4, 4, 6]
    only6 = document(ctl("pool", "show", "--ipv6", "-o", "json"), "PoolList")
    assert [p["cidr"] for p in only6["pools"]] == ["fd80:24e2:f998:72d6::/64"]
    assert ok(ctl("pool", "show", "-o", "table")) == text


def test_ipam_show(ctl, ipam_client):
    ok(ctl("pool", "add", "10.20.0.0/24"))
    ipam_client.auto_assign(num_ipv4=3, handle_id="w1", hostname="host-a")
    ipam_client.auto_assign(num_ipv4=1, handle_id="w2", hostname="host-b")
    text, doc = both(ctl, "ipam", "show", kind="IpamUsage")
    pools, blocks, hosts = tables(text)
    assert [(r["Pool"], int(r["Addresses"]), int(r["Allocated"]), int(r["Blocks"]))
            for r in pools] == [(p["cidr"], p["size"], p["allocated"], p["blocks"])
                                for p in doc["pools"]] == [("10.20.0.0/24", 256, 4, 2)]
    assert [(r["Block"], r["Host"], r["Allocated"]) for r in blocks] == \
        [(b["cidr"], b["host"] or "-", f"{b['allocated']}/{b['size']}") for b in doc["blocks"]]
    assert {b["host"]: b["allocated"] for b in doc["blocks"]} == {"host-a": 3, "host-b": 1}
    assert [(r["Host"], int(r["Blocks"]), int(r["Allocated"])) for r in hosts] == \
        [(h["host"], h["blocks"], h["allocated"]) for h in doc["hosts"]] == \
        [("host-a", 1, 3), ("host-b", 1, 1)]


def test_ipam_show_ip(ctl, ipam_client):
    ok(ctl("pool", "add", "10.20.0.0/24"))
    ip = ipam_client.auto_assign(num_ipv4=1, handle_id="w1", hostname="host-a",
                                 attributes={"workload": "web1"}).ipv4[0]
    text, doc = both(ctl, "ipam", "show", f"--ip={ip}", kind="IpAllocation")
    assert doc == {"kind": "IpAllocation", "version": 1, "ip": ip, "pool": "10.20.0.0/24",
                   "block": doc["block"], "block_host": "host-a", "allocated": True,
                   "handle_id": "w1", "host": "host-a", "attributes": {"workload": "web1"}}
    assert text == (f"IP {ip} is in pool 10.20.0.0/24, block {doc['block']} (affine to host "
                    "host-a).\nIt is allocated to handle w1 for host host-a.\n"
                    "  workload: web1\n")
    text, doc = both(ctl, "ipam", "show", "--ip=10.20.0.200", kind="IpAllocation")
    assert (doc["allocated"], doc["handle_id"], doc["host"], doc["attributes"]) == \
        (False, None, None, {})
    assert text.endswith("It is not allocated.\n") and doc["pool"] in text
    fails(ctl("ipam", "show", "--ip=10.99.0.1", "-o", "json"),
          "10.99.0.1 is not in any configured pool.")


def test_ipam_check(ctl, store):
    """Problems: exit 1 and the one line on stderr, with the JSON on stdout."""
    ok(ctl("pool", "add", "10.60.0.0/25"))
    text, doc = both(ctl, "ipam", "check", kind="IpamCheck")
    assert doc["problems"] == [] and text.endswith("no problems found.\n")
    assert store.commit(Txn().create(keys.affinity("host-a", ip_network("10.60.0.0/26")),
                                     {"state": "pending"}))
    text, doc = both(ctl, "ipam", "check", kind="IpamCheck", exit_code=1)
    lines = text.splitlines()
    assert lines[0] == (f"Checked {doc['blocks_checked']} block(s) and "
                        f"{doc['handles_checked']} handle(s): 1 problem(s) found.")
    assert lines[1:] == [f"  [{p['kind']}] {p['detail']}" for p in doc["problems"]]
    assert "pending affinity for block 10.60.0.0/26" in doc["problems"][0]["detail"]
    fails(ctl("ipam", "check", "-o", "json"), "IPAM data is inconsistent; see the problems "
          "above.")


def test_check(ctl, store, etcd):
    text, doc = both(ctl, "check", kind="RecordCheck")
    assert doc["malformed"] == [] and doc["etcd_endpoints"] == [etcd]
    assert text == f"Checked {doc['records_checked']} record(s) in etcd at {etcd}: no " \
        "malformed records.\n"
    broken = keys.endpoint("a", "netns", "broken", "f" * 32)
    assert store.commit(Txn().create(broken, {"state": "active"}))
    text, doc = both(ctl, "check", kind="RecordCheck", exit_code=1)
    assert doc["malformed"] == [{"key": broken, "problem": "field 'endpoint_id' is missing"}]
    assert text.splitlines()[1:] == [f"  {m['key']}: {m['problem']}" for m in doc["malformed"]]
    assert f"{doc['records_checked']} record(s)" in text


def test_shownodes(ctl, store, bgp_server):
    register(bgp_server, "h1", "172.30.0.2", "fd99::2", as_num=65002)
    register(bgp_server, "h2", "172.30.0.3")
    add_endpoint(store, "h1", "w1", ["10.20.0.1/32"])
    add_endpoint(store, "h1", "w2", ["10.20.0.2/32"])
    text, doc = both(ctl, "shownodes", kind="NodeList")
    nodes, counts = tables(text)
    assert [(r["Host"], r["IPv4"], r["IPv6"], r["AS"]) for r in nodes] == \
        [(n["name"], n["ipv4"], n["ipv6"] or "-", str(n["as_num"] or "(default)"))
         for n in doc["nodes"]] == \
        [("h1", "172.30.0.2", "fd99::2", "65002"), ("h2", "172.30.0.3", "-", "(default)")]
    assert [(r["Host"], r["Workload type"], int(r["Number of workloads"])) for r in counts] == \
        [("h1", "netns", 2), ("h2", "-", 0)]
    assert [n["workloads"] for n in doc["nodes"]] == [[{"orchestrator": "netns", "count": 2}],
                                                      []]
    assert "endpoints" not in doc["nodes"][0]


def test_shownodes_detailed(ctl, store, bgp_server):
    empty = document(ctl("shownodes", "--detailed", "-o", "json"), "NodeList")
    assert empty["nodes"] == []
    register(bgp_server, "h1", "172.30.0.2")
    first = add_endpoint(store, "h1", "w1", ["10.20.0.1/32"], ["fd80::1/128"])
    text, doc = both(ctl, "shownodes", "--detailed", kind="NodeList")
    _, endpoints = tables(text)
    assert [(r["Host"], r["Workload type"], r["Workload ID"], r["Endpoint ID"], r["Addresses"],
             r["MAC"], r["State"]) for r in endpoints] == \
        [(n["name"], e["orchestrator"], e["workload_id"], e["endpoint_id"],
          ", ".join(e["ipv4_nets"] + e["ipv6_nets"]), e["mac"], e["state"])
         for n in doc["nodes"] for e in n["endpoints"]]
    assert doc["nodes"][0]["endpoints"][0]["endpoint_id"] == first
    assert doc["nodes"][0]["endpoints"][0]["ipv6_nets"] == ["fd80::1/128"]


def test_profile_show(ctl, store):
    for name in ("DB", "WEB"):
        ok(ctl("profile", "add", name))
    ok(ctl("profile", "WEB", "tag", "add", "FRONTEND"))
    member = add_endpoint(store, "h1", "w1", ["10.20.0.1/32"], profiles=["WEB"])
    text, doc = both(ctl, "profile", "show", kind="ProfileList")
    assert [r["Name"] for r in tables(text)[0]] == [p["name"] for p in doc["profiles"]] == \
        ["DB", "WEB"]
    assert doc["profiles"][0] == {"name": "DB"}
    text, doc = both(ctl, "profile", "show", "--detailed", kind="ProfileList")
    assert [(r["Name"], r["Tags"], r["Member endpoints"]) for r in tables(text)[0]] == \
        [(p["name"], ",".join(p["tags"]), ", ".join(p["member_endpoint_ids"]) or "-")
         for p in doc["profiles"]]
    assert doc["profiles"][1] == {"name": "WEB", "tags": ["WEB", "FRONTEND"],
                                  "member_endpoint_ids": [member]}


def test_profile_tag_show(ctl):
    ok(ctl("profile", "add", "WEB"))
    ok(ctl("profile", "WEB", "tag", "add", "FRONTEND"))
    text, doc = both(ctl, "profile", "WEB", "tag", "show", kind="ProfileTags")
    assert text.splitlines() == doc["tags"] == ["WEB", "FRONTEND"]
    assert doc["profile"] == "WEB"
    fails(ctl("profile", "NOPE", "tag", "show", "-o", "json"),
          "Couldn't find profile with name NOPE")


def test_profile_rule_show(ctl):
    ok(ctl("profile", "add", "WEB"))
    rules = {"inbound_rules": [{"action": "allow", "protocol": "tcp", "src_net": "10.0.0.0/8",
                                "dst_ports": [80, "8000:8080"]},
                               {"action": "deny"}],
             "outbound_rules": [{"action": "allow", "protocol": "icmp", "icmp_type": 8}]}
    ok(ctl("profile", "WEB", "rule", "update", input=json.dumps(rules)))
    text, doc = both(ctl, "profile", "WEB", "rule", "show", kind="ProfileRules")
    lines = text.splitlines()
    cut = lines.index("Outbound rules:")
    assert lines[0] == "Inbound rules:"
    for shown, listed in ((lines[1:cut], doc["inbound_rules"]),
                          (lines[cut + 1:], doc["outbound_rules"])):
        assert [line.split(None, 1) for line in shown] == \
            [[str(r["number"]), r["description"]] for r in listed]
    assert doc["inbound_rules"][0] == {"number": 1, "action": "allow", "protocol": "tcp",
                                       "src_net": "10.0.0.0/8", "dst_ports": [80, "8000:8080"],
                                       "description": "allow tcp from 10.0.0.0/8 to ports "
                                                      "[80, 8000:8080]"}
    assert doc["outbound_rules"][0]["icmp_type"] == 8 and doc["profile"] == "WEB"


def test_endpoint_profile_show(ctl, store):
    for name in ("WEB", "DB"):
        ok(ctl("profile", "add", name))
    ep = add_endpoint(store, "h1", "w1", ["10.20.0.1/32"], profiles=["WEB", "DB"])
    text, doc = both(ctl, "endpoint", ep, "profile", "show", kind="EndpointProfiles")
    assert text.splitlines() == doc["profile_ids"] == ["WEB", "DB"]
    assert doc["endpoint_id"] == ep
    fails(ctl("endpoint", "0" * 32, "profile", "show", "-o", "json"),
          f"Endpoint {'0' * 32} not found.")


def test_bgp_default_node_as_and_node_mesh(ctl):
    text, doc = both(ctl, "bgp", "default-node-as", kind="BgpDefaultNodeAs")
    assert text == f"{doc['default_as']}\n" and doc["default_as"] == 64511
    ok(ctl("bgp", "default-node-as", "64512"))
    assert document(ctl("bgp", "default-node-as", "-o", "json"),
                    "BgpDefaultNodeAs")["default_as"] == 64512
    text, doc = both(ctl, "bgp", "node-mesh", kind="BgpNodeMesh")
    assert (text, doc["node_mesh"]) == ("on\n", True)
    ok(ctl("bgp", "node-mesh", "off"))
    text, doc = both(ctl, "bgp", "node-mesh", kind="BgpNodeMesh")
    assert (text, doc["node_mesh"]) == ("off\n", False)
    result = ctl("bgp", "node-mesh", "on", "-o", "json")     # -o only where it shows
    assert result.returncode == 1 and result.stderr.startswith("Invalid arguments.")


def peer_rows(text, title):
    return [(r[title.format(v=v)], r["AS Num"]) for v, table in zip((4, 6), tables(text))
            for r in table]


def test_bgp_peer_show(ctl):
    text, doc = both(ctl, "bgp", "peer", "show", kind="BgpPeerList")
    assert doc["peers"] == [] and text == "No IPv4 BGP Peers defined.\n" \
        "No IPv6 BGP Peers defined.\n"
    ok(ctl("bgp", "peer", "add", "fd99::251", "as", "65001"))
    ok(ctl("bgp", "peer", "add", "172.30.0.251", "as", "65000"))
    text, doc = both(ctl, "bgp", "peer", "show", kind="BgpPeerList")
    assert peer_rows(text, "Global IPv{v} BGP Peer") == \
        [(p["ip"], str(p["as_num"])) for p in doc["peers"]]
    assert doc["peers"] == [{"ip": "172.30.0.251", "ip_version": 4, "as_num": 65000},
                            {"ip": "fd99::251", "ip_version": 6, "as_num": 65001}]
    only6 = document(ctl("bgp", "peer", "show", "--ipv6", "-o", "json"), "BgpPeerList")
    assert [p["ip"] for p in only6["peers"]] == ["fd99::251"]


def test_node_bgp_peer_show(ctl, bgp_server):
    register(bgp_server, "h1", "172.30.0.2")
    ok(ctl("node", "bgp", "peer", "add", "172.30.0.252", "as", "65003", "--name=h1"))
    text, doc = both(ctl, "node", "bgp", "peer", "show", "--name=h1", kind="NodeBgpPeerList")
    assert text.endswith("No IPv6 BGP Peers defined for node h1.\n")
    assert peer_rows(text, "Node specific IPv{v} BGP Peer") == \
        [(p["ip"], str(p["as_num"])) for p in doc["peers"]] == [("172.30.0.252", "65003")]
    assert doc["node"] == "h1" and doc["peers"][0]["ip_version"] == 4


def test_bgppeer_rr_show(ctl):
    ok(ctl("bgppeer", "rr", "add", "172.30.0.250"))
    ok(ctl("bgp", "peer", "add", "172.30.0.251", "as", "65000"))     # not a reflector
    text, doc = both(ctl, "bgppeer", "rr", "show", kind="RouteReflectorList")
    assert peer_rows(text, "IPv{v} Route Reflector") == \
        [(p["ip"], p["as_num"] or "(default)") for p in doc["peers"]] == \
        [("172.30.0.250", "(default)")]
    assert doc["peers"] == [{"ip": "172.30.0.250", "ip_version": 4, "as_num": None}]
    assert text.endswith("No IPv6 BGP Peers defined.\n")


def test_policy_explain(ctl, store):
    ok(ctl("profile", "add", "WEB"))
    ok(ctl("profile", "add", "DB"))
    add_endpoint(store, "h1", "web1", ["10.20.0.1/32"], profiles=["WEB"])
    add_endpoint(store, "h2", "db1", ["10.20.0.2/32"], profiles=["DB"])
    text, doc = both(ctl, "policy", "explain", "10.20.0.1", "10.20.0.2", "--protocol=tcp",
                     "--port=5432", kind="PolicyExplanation")
    lines = text.splitlines()
    assert lines[0] == "DENIED: tcp port 5432 from 10.20.0.1 to 10.20.0.2"
    assert (doc["allowed"], doc["protocol"], doc["port"]) == (False, "tcp", 5432)
    assert doc["src"] == {"ip": "10.20.0.1", "container": None}
    assert lines[1:] == [f"  {s['direction']:<8} {s['text']}" for s in doc["steps"]] + \
        [f"  note: {n}" for n in doc["notes"]]
    outbound, inbound = doc["steps"]
    assert (outbound["direction"], outbound["allowed"], outbound["profile"],
            outbound["rule_number"], outbound["workload_id"]) == \
        ("outbound", True, "WEB", 1, "web1")
    assert (inbound["allowed"], inbound["profile"], inbound["rule_number"], inbound["rule"]) == \
        (False, "DB", 2, "deny")
    text, doc = both(ctl, "policy", "explain", "10.20.0.1", "10.99.0.1", kind="PolicyExplanation")
    assert text.startswith("ALLOWED: ping from 10.20.0.1 to 10.99.0.1\n")
    assert (doc["protocol"], doc["port"], doc["allowed"]) == (None, None, True)
    assert doc["notes"] and all(f"  note: {n}" in text for n in doc["notes"])


def test_policy_endpoint_to_host(ctl):
    text, doc = both(ctl, "policy", "endpoint-to-host", kind="EndpointToHost")
    assert (text, doc["action"]) == ("drop\n", "drop")
    ok(ctl("policy", "endpoint-to-host", "return"))
    text, doc = both(ctl, "policy", "endpoint-to-host", kind="EndpointToHost")
    assert (text, doc["action"]) == ("return\n", "return")


def test_certs_show(pki_dir):
    cert = str(pki_dir / "admin.pem")
    text = ok(cli.calicoctl("certs", "show", cert))
    doc = document(cli.calicoctl("certs", "show", cert, "-o", "json"), "Certificate")
    assert text.splitlines() == [f"Identity:  {doc['identity']}", f"Issuer:    {doc['issuer']}",
                                 f"Valid:     {doc['not_before']} to {doc['not_after']}",
                                 f"Hosts:     {', '.join(doc['hosts'])}"]
    assert (doc["path"], doc["identity"]) == (cert, "admin")
    assert "127.0.0.1" in doc["hosts"]
    fails(cli.calicoctl("certs", "show", str(pki_dir / "nope.pem"), "-o", "json"),
          f"Cannot read {pki_dir / 'nope.pem'}: No such file or directory.")
