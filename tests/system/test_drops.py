"""Live drops and rule counters on two hosts: real iptables (NFLOG), the
agents' netlink listeners, etcd and calicoctl as the operator."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading


from tests.cli import fails, ok
from tests.system.helpers import wait_for
from tools.lab import ROOT

DB_RULES = {"id": "DB",
            "inbound_rules": [{"action": "allow", "src_tag": "DB"},
                              {"action": "deny", "protocol": "tcp", "dst_ports": [5432]},
                              {"action": "allow", "protocol": "tcp", "dst_ports": [8080]},
                              {"action": "deny"}],
            "outbound_rules": [{"action": "allow"}]}


def drops(host, *args) -> list[dict]:
    return json.loads(ok(host.calicoctl("policy", "drops", "-o", "json", *args)))["drops"]


def seen(host, what, *args, **match) -> list[dict]:
    """Wait until `policy drops` shows a drop with the fields ``match``."""
    found = []

    def look():
        found[:] = [d for d in drops(host, *args)
                    if all(d.get(k) == v or (isinstance(d.get(k), dict) and
                                             d[k].get("ip") == v) for k, v in match.items())]
        return bool(found)
    wait_for(what, look, timeout=15)
    return found


def test_denied_packets_are_shown_with_their_rule_and_rules_count_packets(hosts):
    h1, h2 = hosts
    for name in ("WEB", "DB"):
        ok(h1.calicoctl("profile", "add", name))
    ok(h1.calicoctl("profile", "DB", "rule", "update", input=json.dumps(DB_RULES)))
    web = h1.add_workload("web", "ipv4", "ipv6", profiles=("WEB",))
    other = h1.add_workload("other", profiles=("WEB",))
    db = h2.add_workload("db", "ipv4", "ipv6", profiles=("DB",))
    db2 = h1.add_workload("db2", profiles=("DB",))
    db_v4 = next(ip for ip in db.ips if "." in ip)
    db_v6 = next(ip for ip in db.ips if ":" in ip)
    wait_for("DB members reach each other", lambda: db2.ping(db_v4))

    # A denied ping: DB's catch-all deny, on h2 (db's inbound policy).
    assert not web.ping(db_v4)
    ping = seen(h1, "the denied ping", protocol="icmp", dst=db_v4)[-1]
    assert (ping["node"], ping["profile"], ping["direction"], ping["rule_number"]) == (
        "h2", "DB", "inbound", 4)
    assert ping["src"]["workload_id"] == web.ref and ping["dst"]["workload_id"] == db.ref
    assert ping["verdict"] == "denied by profile DB inbound rule 4: deny"
    # A denied TCP connect: rule 2, port 5432; an allowed one (8080) is not shown.
    with db.tcp_listen(8080):
        assert web.tcp_connect(db_v4, 8080)
    assert not web.tcp_connect(db_v4, 5432)
    tcp = seen(h1, "the denied connect", protocol="tcp", dst=db_v4)[-1]
    assert (tcp["rule_number"], tcp["dst"]["port"]) == (2, 5432)
    assert tcp["verdict"] == "denied by profile DB inbound rule 2: deny tcp to ports [5432]"
    assert not [d for d in drops(h1) if d["dst"]["port"] == 8080]
    text = ok(h1.calicoctl("policy", "drops"))
    assert (f" h2 tcp {next(ip for ip in web.ips if '.' in ip)}:" in text and
            f"-> {db_v4}:5432 ({db.ref}): denied by profile DB inbound rule 2: deny tcp to "
            f"ports [5432] [{db.ref}]" in text)
    # IPv6 too.
    assert not web.ping(db_v6)
    v6 = seen(h1, "the denied IPv6 ping", protocol="icmpv6", dst=db_v6)[-1]
    assert (v6["ip_version"], v6["rule_number"], v6["icmp_type"]) == (6, 4, 128)

    # Filters: by node (ours are all h2's), by endpoint. (Other drops may be
    # there too, e.g. workloads' own IPv6 multicast reports to their host.)
    def ours(entries):
        return [d for d in entries if d["dst"]["ip"] in (db_v4, db_v6)]
    on_h1, on_h2 = drops(h1, "--node=h1"), drops(h1, "--node=h2")
    assert ours(on_h1) == [] and {d["node"] for d in on_h1} <= {"h1"}
    assert len(ours(on_h2)) >= 3 and {d["node"] for d in on_h2} == {"h2"}
    fails(h1.calicoctl("policy", "drops", "--node=nope"),
          "No node named 'nope' is registered (nodes: h1, h2).")
    db_id = ping["dst"]["endpoint_id"]
    assert {d["dst"]["ip"] for d in drops(h1, f"--endpoint={db_id}")} >= {db_v4, db_v6}
    other_id = json.loads(ok(h1.calicoctl("container", "show", "-o", "json")))
    other_id = next(e["endpoint_id"] for e in other_id["endpoints"]
                    if e["workload_id"] == other.ref)
    mine = drops(h1, f"--endpoint={other_id}")
    assert ours(mine) == [] and all(other_id in (d["endpoint_id"], d["src"]["endpoint_id"],
                                                 d["dst"]["endpoint_id"]) for d in mine)
    fails(h1.calicoctl("policy", "drops", "--endpoint=nope"), "No endpoint with id 'nope'.")

    # Follow: what comes after is printed as it comes, one JSON object a line.
    follow = subprocess.Popen(
        ["ip", "netns", "exec", h1.ns.name, sys.executable, "-m", "cli.calicoctl", "policy",
         "drops", "--follow", "--endpoint=" + db_id, "-o", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **h1.env})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True).start()
    try:
        port = 5432
        got = []

        def followed():
            web.tcp_connect(db_v4, port, timeout=0.3)
            while not lines.empty():
                got.append(json.loads(lines.get()))
            return any(d["kind"] == "PolicyDrop" and d["protocol"] == "tcp" and
                       d["seq"] > tcp["seq"] for d in got)
        wait_for("a new drop in --follow", followed, timeout=20)
    finally:
        follow.send_signal(signal.SIGINT)        # as Ctrl-C: it withdraws its question
        assert follow.wait(timeout=10) == 130

    # Counters: 5 pings between DB members count on DB's inbound rule 1 (each
    # its own flow: later echo requests of one ping would pass as established).
    before = json.loads(ok(h1.calicoctl("profile", "DB", "rule", "show", "--stats", "-o",
                                        "json")))
    assert before["nodes"] == ["h1", "h2"] and before["unanswered"] == []
    for _ in range(5):
        assert db2.ping(db_v4)
    after = json.loads(ok(h1.calicoctl("profile", "DB", "rule", "show", "--stats", "-o",
                                       "json")))
    assert after["inbound_rules"][0]["packets"] - before["inbound_rules"][0]["packets"] >= 5
    # The denied IPv4 and IPv6 pings, though a full resync may have rewritten
    # the chains since (ip6tables-nft-restore drops IPv6 counters: the agent keeps them).
    assert after["inbound_rules"][3]["packets"] >= 2
    shown = ok(h1.calicoctl("profile", "DB", "rule", "show", "--stats"))
    assert "pkts" in shown and "allow from tag DB" in shown
