"""Security policy on two hosts: real iptables, ipsets, BIRD, etcd and services."""

import json
import os
import signal
import socket
import time

import pytest

from calicopy.netns import socket_in
from tests.cli import fails, ok
from tests.system.helpers import wait_for
from tools.lab import Listener, assert_connectivity


def test_seed_three_profiles_across_two_hosts(hosts):
    h1, h2 = hosts
    for name in ("PROF_1_3_5", "PROF_2", "PROF_4"):
        assert ok(h1.calicoctl("profile", "add", name)) == f"Created profile {name}\n"
    w1 = h1.add_workload("w1", profiles=("PROF_1_3_5",))
    w2 = h1.add_workload("w2", profiles=("PROF_2",))
    w3 = h1.add_workload("w3", profiles=("PROF_1_3_5",))
    w4 = h2.add_workload("w4", profiles=("PROF_4",))
    w5 = h2.add_workload("w5", profiles=("PROF_1_3_5",))
    members, others = [w1, w3, w5], [w2, w4]
    assert_connectivity(
        reach=[(a, b.ip) for a in members for b in members if a is not b],
        blocked=[(a, b.ip) for a in members for b in others] +
                [(b, a.ip) for a in members for b in others])
    shown = ok(h1.calicoctl("profile", "show", "--detailed"))
    assert "PROF_1_3_5" in shown and "PROF_4" in shown


def test_no_profile_is_isolated_first_deny_decides_union_without_catch_all(hosts):
    """Deny is final, as in the original system: with the default rules (allow
    from its tag, then deny), an endpoint with profiles [A, B] admits only A's
    members; B's never reach B's rules. Deliberate. Profiles whose inbound
    rules end without a catch-all deny do add up."""
    h1, h2 = hosts
    for name in ("A", "B"):
        ok(h1.calicoctl("profile", "add", name))
    lonely = h1.add_workload("lonely")
    a = h1.add_workload("a", profiles=("A",))
    b = h2.add_workload("b", profiles=("B",))
    both = h2.add_workload("both", profiles=("A", "B"))
    assert_connectivity(
        reach=[(a, both.ip), (both, a.ip), (both, b.ip)],
        blocked=[(b, both.ip), (a, b.ip), (b, a.ip), (a, lonely.ip), (lonely, a.ip)])
    assert lonely.ping(h1.ip) is False       # not even its own host
    explained = ok(h1.calicoctl("policy", "explain", b.ip, both.ip))
    assert explained.startswith(f"DENIED: ping from {b.ip} to {both.ip}")
    assert f"denied by profile A inbound rule 2: deny [{both.ref}]" in explained
    for name in ("A", "B"):
        ok(h1.calicoctl("profile", name, "rule", "update", input=json.dumps(
            {"id": name, "inbound_rules": [{"action": "allow", "src_tag": name}],
             "outbound_rules": [{"action": "allow"}]})))
    wait_for("the union", lambda: b.ping(both.ip))
    assert_connectivity(reach=[(a, both.ip), (b, both.ip), (both, a.ip), (both, b.ip)],
                        blocked=[(a, b.ip), (b, a.ip), (lonely, a.ip)])
    assert "allowed by profile B inbound rule 1: allow from tag B" in \
        ok(h1.calicoctl("policy", "explain", b.ip, both.ip))


def test_deny_is_final_whatever_later_profiles_say(hosts):
    h1, h2 = hosts
    for name in ("A", "B"):
        ok(h1.calicoctl("profile", "add", name))
    ok(h1.calicoctl("profile", "A", "rule", "update", input=json.dumps(
        {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]})))
    ok(h1.calicoctl("profile", "B", "rule", "update", input=json.dumps(
        {"inbound_rules": [{"action": "deny", "protocol": "tcp", "dst_ports": [22]}],
         "outbound_rules": [{"action": "allow"}]})))
    server = h1.add_workload("server", profiles=("B", "A"))
    client = h2.add_workload("client", profiles=("A",))
    with server.tcp_listen(22), server.tcp_listen(80):
        wait_for("port 80", lambda: client.tcp_connect(server.ip, 80))
        assert not client.tcp_connect(server.ip, 22)
    denied = ok(h2.calicoctl("policy", "explain", client.ref, server.ip, "--protocol=tcp",
                             "--port=22"))
    assert denied.startswith(f"DENIED: tcp port 22 from {client.ip} ({client.ref})")
    assert "denied by profile B inbound rule 1: deny tcp to ports [22]" in denied
    allowed = ok(h2.calicoctl("policy", "explain", client.ref, server.ip, "--protocol=tcp",
                              "--port=80"))
    assert allowed.startswith("ALLOWED: tcp port 80")
    assert "allowed by profile A inbound rule 1: allow" in allowed


def test_the_host_is_closed_to_its_workloads_by_default(hosts):
    h1, h2 = hosts
    ok(h1.calicoctl("profile", "add", "NET"))
    w = h1.add_workload("w", "auto", "ipv6", profiles=("NET",))
    v4, v6 = w.ips[0], w.ips[1]
    loopback = "10.255.255.1"          # an address on the host's lo (a router id, say)
    h1.ns.run("ip", "addr", "add", f"{loopback}/32", "dev", "lo")
    targets = [(h1.ip, 7001), (loopback, 7001), (h1.ip6, 7001), (h1.ip, 7002)]

    def reachable():
        return [w.tcp_connect(ip, port, timeout=0.5) for ip, port in targets]
    assert ok(h1.calicoctl("policy", "endpoint-to-host")) == "drop\n"
    def explained(*args):
        return ok(h1.calicoctl("policy", "explain", w.ref, h1.ip, *args))
    with Listener(h1, 7001, v6=True), Listener(h1, 7002, v6=True):
        assert reachable() == [False] * 4
        assert not w.tcp_connect(h1.ip, 179)         # BIRD
        w.assert_can_ping(h1.ip)
        w.assert_can_ping(h1.ip6)
        denied = explained("--protocol=tcp", "--port=7001")
        assert denied.startswith(f"DENIED: tcp port 7001 from {v4} ({w.ref}) to {h1.ip}")
        assert f"{h1.ip} is the address of node h1, the source's own host: the " \
            "endpoint-to-host action is drop." in denied
        assert explained().startswith("ALLOWED: ping")
        assert ok(h2.calicoctl("policy", "endpoint-to-host", "accept")) == \
            "Endpoint-to-host action set to accept.\n"
        wait_for("the host to open", lambda: reachable() == [True] * 4)
        assert ok(h1.calicoctl("policy", "endpoint-to-host")) == "accept\n"
        assert explained("--protocol=tcp", "--port=7001").startswith("ALLOWED: tcp port 7001")
        # return: the host's own INPUT rules decide (this one drops port 7002).
        h1.ns.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7002", "-j", "DROP")
        ok(h1.calicoctl("policy", "endpoint-to-host", "return"))
        wait_for("the host's rules to decide", lambda: reachable() == [True] * 3 + [False])
        w.assert_can_ping(h1.ip)
        for bad in ("allow", "DROP", ""):
            fails(h1.calicoctl("policy", "endpoint-to-host", bad),
                  f"Invalid endpoint-to-host action '{bad}': use drop, return or accept.")
        assert ok(h1.calicoctl("policy", "endpoint-to-host")) == "return\n"
        ok(h1.calicoctl("policy", "endpoint-to-host", "drop"))
        wait_for("the host to close", lambda: reachable() == [False] * 4)
        w.assert_can_ping(h1.ip)
        w.assert_can_ping(h1.ip6)
    # The workload's own outbound policy comes first: no ping when it denies.
    ok(h1.calicoctl("profile", "NET", "rule", "update", input=json.dumps(
        {"inbound_rules": [{"action": "allow", "src_tag": "NET"}],
         "outbound_rules": [{"action": "deny"}]})))
    wait_for("its outbound deny", lambda: not w.ping(h1.ip))
    assert not w.ping(h1.ip6)
    assert (v4, v6) == tuple(w.refresh())


MUTE = {"inbound_rules": [{"action": "deny"}], "outbound_rules": [{"action": "deny"}]}


def _udp(workload, ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket_in(workload.ns.path, family, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    sock.settimeout(2)
    return sock


def _received(sock: socket.socket, wait: float) -> list[bytes]:
    got, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(100))
        except socket.timeout:
            break
    return got


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_no_riding_another_workloads_established_flow(hosts, family):
    """A workload that takes a local workload's address cannot send as it on
    its established flow, on the same host or across hosts; its own profile
    denies all its outbound traffic, so only an early conntrack accept would
    let it through."""
    h1, h2 = hosts
    ok(h1.calicoctl("profile", "add", "NET"))
    ok(h1.calicoctl("profile", "add", "MUTE"))
    ok(h1.calicoctl("profile", "MUTE", "rule", "update", input=json.dumps(MUTE)))
    wanted = "auto" if family == "ipv4" else "ipv6"
    server = h1.add_workload("s", wanted, profiles=("NET",))
    cases = [(h1.add_workload("v1", wanted, profiles=("NET",)),
              h1.add_workload("a1", wanted, profiles=("MUTE",))),       # all on one host
             (h2.add_workload("v2", wanted, profiles=("NET",)),
              h2.add_workload("a2", wanted, profiles=("MUTE",)))]       # across hosts
    with _udp(server, server.ip, 9999) as listening:
        for victim, attacker in cases:
            with _udp(victim, victim.ip, 5555) as flow:
                for _ in range(20):                 # until the policy is in place
                    flow.sendto(b"hello", (server.ip, 9999))
                    if _received(listening, 0.3):
                        break
                listening.sendto(b"reply", (victim.ip, 5555))   # now ESTABLISHED
                assert flow.recv(100) == b"reply"
                prefix = 32 if family == "ipv4" else 128
                attacker.ns.run("ip", "addr", "add", f"{victim.ip}/{prefix}", "dev", "eth0",
                                *(("nodad",) if family == "ipv6" else ()))
                with _udp(attacker, victim.ip, 5555) as spoofer:
                    for _ in range(5):
                        spoofer.sendto(b"SPOOFED", (server.ip, 9999))
                    assert b"SPOOFED" not in _received(listening, 1.5)
                flow.sendto(b"real", (server.ip, 9999))     # the flow itself still works
                assert b"real" in _received(listening, 1.5)


def test_tcp_port_rule_and_rule_update_round_trip(hosts):
    h1, h2 = hosts
    ok(h1.calicoctl("profile", "add", "WEB"))
    ok(h1.calicoctl("profile", "add", "CLIENT"))
    server = h1.add_workload("server", profiles=("WEB",))
    client = h2.add_workload("client", profiles=("CLIENT",))
    rules = {"id": "WEB",
             "inbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": [80]},
                               {"action": "allow", "src_tag": "WEB"},
                               {"action": "deny"}],
             "outbound_rules": [{"action": "allow"}]}
    with server.tcp_listen(80), server.tcp_listen(8080):
        assert not client.tcp_connect(server.ip, 80)
        result = h2.calicoctl("profile", "WEB", "rule", "update", input=json.dumps(rules))
        assert ok(result) == "Successfully updated rules on profile WEB\n"
        wait_for("port 80 to open", lambda: client.tcp_connect(server.ip, 80))
        assert not client.tcp_connect(server.ip, 8080)
        client.assert_cant_ping(server.ip)
    shown = ok(h1.calicoctl("profile", "WEB", "rule", "show"))
    assert shown == ("Inbound rules:\n   1 allow tcp to ports [80]\n   2 allow from tag WEB\n"
                     "   3 deny\nOutbound rules:\n   1 allow\n")
    assert json.loads(ok(h1.calicoctl("profile", "WEB", "rule", "json"))) == rules


def test_bad_rules_change_nothing_anywhere(hosts):
    h1, h2 = hosts
    ok(h1.calicoctl("profile", "add", "WEB"))
    a = h1.add_workload("a", profiles=("WEB",))
    b = h2.add_workload("b", profiles=("WEB",))
    before = ok(h1.calicoctl("profile", "WEB", "rule", "json"))
    for document, message in [
        ({"id": "WEB", "inbound_rules": [{"action": "allow"}, {"action": "allow",
                                                                 "dst_ports": [80]}]},
         "Invalid inbound rule 2: field 'dst_ports' needs protocol tcp or udp."),
        ({"id": "WEB", "outbound_rules": [{"actoin": "allow"}]},
         "Invalid outbound rule 1: field 'actoin' is not a rule field"),
        ({"id": "WEB", "inbound_rules": [{"protocol": "icmp", "icmp_code": 3}]},
         "Invalid inbound rule 1: field 'icmp_code' needs icmp_type."),
        ({"id": "WEB", "inbound_rules": [{"src_net": "10.0.0.0/33"}]},
         "Invalid inbound rule 1: field 'src_net' is not a valid CIDR: '10.0.0.0/33'."),
        ({"id": "WEB", "inbound_rules": [{"src_net": "fd00::/64", "ip_version": 4}]},
         "Invalid inbound rule 1: field 'src_net' is not an IPv4 network but ip_version is 4."),
    ]:
        result = h1.calicoctl("profile", "WEB", "rule", "update", input=json.dumps(document))
        assert result.returncode == 1 and result.stderr.startswith(message), result.stderr
    fails(h1.calicoctl("profile", "WEB", "rule", "update", input=json.dumps({"id": "OTHER"})),
          "Rules id 'OTHER' does not match profile name 'WEB'.")
    fails(h1.calicoctl("profile", "WEB", "rule", "update", input="{not json"),
          "The rules on standard input are not valid JSON: Expecting property name enclosed "
          "in double quotes: line 1 column 2 (char 1).")
    assert ok(h1.calicoctl("profile", "WEB", "rule", "json")) == before
    assert_connectivity([(a, b.ip), (b, a.ip)])


def test_profile_and_member_messages(hosts):
    h1, _ = hosts
    ok(h1.calicoctl("profile", "add", "WEB"))
    assert ok(h1.calicoctl("profile", "add", "WEB")) == "Profile WEB already exists.\n"
    name_message = ("Profile names must be <30 character long and can only contain numbers, "
                    "letters and underscores.")
    fails(h1.calicoctl("profile", "add", "bad-name"), name_message)
    fails(h1.calicoctl("profile", "add", "x" * 31), name_message)
    fails(h1.calicoctl("profile", "WEB", "tag", "add", "bad-tag"),
          "Tag names can only contain letters, numbers and underscores.")
    assert ok(h1.calicoctl("profile", "WEB", "tag", "add", "FRONT")) == \
        "Tag FRONT added to profile WEB\n"
    assert ok(h1.calicoctl("profile", "WEB", "tag", "show")) == "WEB\nFRONT\n"
    fails(h1.calicoctl("profile", "WEB", "tag", "remove", "NOPE"), "Tag NOPE is not on profile WEB")
    fails(h1.calicoctl("profile", "remove", "NOPE"), "Couldn't find profile with name NOPE")
    fails(h1.calicoctl("profile", "NOPE", "member", "add", "netns:whatever"),
          "Container netns:whatever not found.")
    w = h1.add_workload("w", profiles=("WEB",))
    fails(h1.calicoctl("profile", "NOPE", "member", "add", w.ref),
          "Couldn't find profile with name NOPE")
    result = h1.calicoctl("profile", "remove", "WEB")
    assert result.returncode == 1 and "used by 1 endpoint(s)" in result.stderr
    assert ok(h1.calicoctl("profile", "remove", "WEB", "--force")) == "Deleted profile WEB\n"
    ep_id = next(line.split("|")[4].strip() for line in
                 ok(h1.calicoctl("shownodes", "--detailed")).splitlines() if w.ns.name in line)
    assert ok(h1.calicoctl("endpoint", ep_id, "profile", "show")) == ""
    ok(h1.calicoctl("profile", "add", "OTHER"))
    assert "OTHER" in ok(h1.calicoctl("endpoint", ep_id, "profile", "append", "OTHER"))
    fails(h1.calicoctl("endpoint", ep_id, "profile", "append", "NOPE"),
          "Couldn't find profile with name NOPE")
    assert ok(h1.calicoctl("endpoint", ep_id, "profile", "show")) == "OTHER\n"
    assert "isolated" in ok(h1.calicoctl("endpoint", ep_id, "profile", "remove", "OTHER"))


def test_no_spoofing_with_another_address_or_mac(hosts):
    h1, h2 = hosts
    ok(h1.calicoctl("profile", "add", "NET"))
    a = h1.add_workload("a", profiles=("NET",))
    b = h2.add_workload("b", profiles=("NET",))
    victim = h1.add_workload("victim", profiles=("NET",))
    a.assert_can_ping(b.ip)
    # A second address added by hand inside the workload, and another
    # workload's address: neither gets out.
    spare = a.ip.rsplit(".", 1)[0] + ".250"
    a.ns.run("ip", "addr", "add", f"{spare}/32", "dev", "eth0")
    a.ns.run("ip", "addr", "add", f"{victim.ip}/32", "dev", "eth0")
    assert not a.ping_from(spare, b.ip)
    assert not a.ping_from(victim.ip, b.ip)
    a.assert_can_ping(b.ip)
    # A changed MAC: nothing gets out any more.
    a.ns.run("ip", "link", "set", "eth0", "address", "02:de:ad:be:ef:01")
    a.ns.run("ip", "neigh", "flush", "all")
    a.assert_cant_ping(b.ip)


def test_ipv6_policy(hosts):
    h1, h2 = hosts
    ok(h1.calicoctl("profile", "add", "V6"))
    a = h1.add_workload("a", "ipv6", profiles=("V6",))
    b = h2.add_workload("b", "ipv6", profiles=("V6",))
    stranger = h2.add_workload("stranger", "ipv6")
    assert_connectivity(reach=[(a, b.ip), (b, a.ip)],
                        blocked=[(stranger, a.ip), (a, stranger.ip)])


def test_agent_restart_keeps_an_open_connection(hosts):
    h1, h2 = hosts
    ok(h1.calicoctl("profile", "add", "NET"))
    server = h1.add_workload("server", profiles=("NET",))
    client = h2.add_workload("client", profiles=("NET",))
    with server.tcp_listen(7000):
        with socket_in(client.ns.path, socket.AF_INET, socket.SOCK_STREAM) as conn:
            conn.settimeout(3)
            conn.connect((server.ip, 7000))
            for host in (h1, h2):
                pid = host.child_pid("policy agent")
                os.kill(pid, signal.SIGKILL)
                wait_for("the agent to come back",
                         lambda h=host, p=pid: h.child_pid("policy agent") not in (None, p))
            deadline = time.monotonic() + 4
            n = 0
            while time.monotonic() < deadline:     # through the restarts and resyncs
                conn.sendall(b"ping %d" % n)
                assert conn.recv(100) == b"ping %d" % n
                n += 1
                time.sleep(0.05)


def test_a_hook_an_operator_deleted_is_put_back(hosts):
    """The idle agent starts no `iptables -C`: it sees the deletion in the
    kernel's nf_tables ruleset generation, checks, and puts the jump back."""
    h1, _ = hosts
    for name in ("A", "B"):
        ok(h1.calicoctl("profile", "add", name))
    a1 = h1.add_workload("a1", profiles=("A",))
    a2 = h1.add_workload("a2", profiles=("A",))
    b = h1.add_workload("b", profiles=("B",))
    h1.ns.run("iptables", "-w", "-D", "FORWARD", "-j", "cali-FORWARD")
    wait_for("the agent to put the FORWARD hook back", lambda: h1.ns.run(
        "iptables", "-w", "-C", "FORWARD", "-j", "cali-FORWARD", check=False).returncode == 0)
    assert_connectivity(reach=[(a1, a2.ip)], blocked=[(b, a1.ip), (a1, b.ip)])


def test_policy_explain(hosts):
    h1, h2 = hosts
    ok(h1.calicoctl("profile", "add", "WEB"))
    ok(h1.calicoctl("profile", "add", "DB"))
    web = h1.add_workload("web", profiles=("WEB",))
    web2 = h2.add_workload("web2", profiles=("WEB",))
    db = h1.add_workload("db", profiles=("DB",))
    allowed = ok(h1.calicoctl("policy", "explain", web.ref, web2.ip))
    assert allowed.startswith(f"ALLOWED: ping from {web.ip} ({web.ref}) to {web2.ip}")
    assert "allowed by profile WEB inbound rule 1: allow from tag WEB" in allowed
    denied = ok(h1.calicoctl("policy", "explain", web.ref, db.ref, "--protocol=tcp",
                             "--port=5432"))
    assert denied.startswith(f"DENIED: tcp port 5432 from {web.ip} ({web.ref}) to {db.ip}")
    assert "denied by profile DB inbound rule 2: deny" in denied
    # And the dataplane agrees.
    web.assert_can_ping(web2.ip)
    web.assert_cant_ping(db.ip)
