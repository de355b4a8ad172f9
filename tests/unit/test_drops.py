"""Live drops and rule counters on the node side: the NFLOG rules the
dataplane writes, the netlink messages read back, naming a sample's rule,
the counters, and the answers to the administrator's questions (an
in-memory store, the kernel stub; no root)."""

import socket
import struct

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.endpoint import Endpoint
from calicopy.model.policy import Profile, Rule, Snapshot
from cli.drops import Cluster, line
from node.policy import nflog
from node.policy.dataplane import NFLOG_GROUP, compute, profile_chain
from node.policy.drops import ANSWER_DROPS, UNKNOWN, Answers, DropLog, rule_counters, verdicts
from node.policy.iptables import Tables
from tests.fakes import MemoryStore
from tests.kernel_stub import KernelStub


def endpoint(n: str, node: str, ip: str, profiles) -> Endpoint:
    ep = Endpoint(endpoint_id=n * 32, node=node, orchestrator="cni", workload_id=f"w{n}",
                  interface_name="eth0", netns="/x", mac=f"02:00:00:00:00:0{n}",
                  profile_ids=list(profiles))
    ep.set_ips([ip])
    return ep


def snapshot(*profiles, endpoints=()) -> Snapshot:
    return Snapshot(1, list(endpoints), {p.name: p for p in profiles}, set(), [], "drop")


def test_every_policy_drop_is_sampled_first_with_a_unique_prefix_naming_its_verdict():
    db = Profile("DB", ["DB"], [Rule("deny", "tcp", dst_ports=(5432,)), Rule("allow")],
                 [Rule("allow")])
    eps = [endpoint("1", "h1", "10.20.0.1", ["DB"]), endpoint("2", "h1", "fd80::2", [])]
    desired = compute(snapshot(db, endpoints=eps), "h1")
    for version, tables in desired.tables.items():
        prefixes = set()
        for table, chains in tables.items():
            for chain, rules in chains.items():
                for i, rule in enumerate(rules):
                    if not rule.endswith("-j DROP") or "--ctstate INVALID" in rule:
                        continue
                    sample = rules[i - 1]
                    # The same match, rate-limited, to our group, then the DROP.
                    match = rule[:rule.index("-m comment")]
                    assert sample.startswith(match) and "-m limit --limit 100/sec" in sample
                    assert f"-j NFLOG --nflog-group {NFLOG_GROUP} --nflog-prefix " \
                           f"{chain}/{i}:" in sample, sample
                    prefix = sample.split("--nflog-prefix ")[1]
                    assert prefix not in prefixes and len(prefix) < 64
                    prefixes.add(prefix)
        assert prefixes
    inbound = desired.tables[4]["filter"][profile_chain("DB", "inbound")]
    assert '"denied by profile DB inbound rule 1: deny tcp to ports [5432]"' in inbound[0]
    tw = desired.tables[4]["filter"]["cali-tw-" + "1" * 11]
    assert any('"denied: no rule of profiles DB matched (inbound)"' in r for r in tw)
    fp = desired.tables[6]["filter"]["cali-fp-" + "2" * 11]
    assert any('"denied: the endpoint has no profile, so it is isolated (outbound)"' in r
               for r in fp)


def _message(prefix: bytes, payload: bytes, indev: int = 0, outdev: int = 0,
             family: int = socket.AF_INET) -> bytes:
    attrs = nflog._attr(nflog.NFULA_PREFIX, prefix + b"\0") + nflog._attr(
        nflog.NFULA_PAYLOAD, payload)
    if indev:
        attrs += nflog._attr(nflog.NFULA_IFINDEX_INDEV, struct.pack(">I", indev))
    if outdev:
        attrs += nflog._attr(nflog.NFULA_IFINDEX_OUTDEV, struct.pack(">I", outdev))
    body = struct.pack("BBH", family, 0, socket.htons(NFLOG_GROUP)) + attrs
    return struct.pack("IHHII", 16 + len(body), nflog.NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body


def test_netlink_messages_become_samples_ipv4_tcp_and_ipv6_icmp():
    tcp = (bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + socket.inet_aton("10.20.0.1")
           + socket.inet_aton("10.20.0.2") + struct.pack(">HH", 41234, 5432) + bytes(16))
    icmp6 = (bytes([0x60, 0, 0, 0, 0, 8, 58, 64]) + socket.inet_pton(socket.AF_INET6, "fd80::1")
             + socket.inet_pton(socket.AF_INET6, "fd80::2") + bytes([128, 0, 0, 0]))
    data = _message(b"cali-pi-x/1:ab", tcp, indev=3) + _message(
        b"cali-tw-y/5:cd", icmp6, outdev=7, family=socket.AF_INET6)
    names = {3: "cali1111", 7: "cali2222"}.__getitem__
    first, second = nflog.parse_message(data, names=names, now=lambda: 5.0)
    assert (first.version, first.src, first.dst, first.protocol, first.src_port,
            first.dst_port, first.prefix, first.in_interface, first.out_interface) == (
        4, "10.20.0.1", "10.20.0.2", "tcp", 41234, 5432, "cali-pi-x/1:ab", "cali1111", "")
    assert (second.version, second.src, second.protocol, second.icmp_type,
            second.out_interface) == (6, "fd80::1", "icmpv6", 128, "cali2222")
    assert nflog.parse_packet(b"\x00junk") is None
    bind = nflog.config_message(NFLOG_GROUP, nflog.NFULNL_CFG_CMD_BIND)
    assert struct.unpack_from("IH", bind) == (len(bind), 0x0401)


SAVE = '''*filter
:cali-pi-abc - [0:0]
-A cali-pi-abc -p tcp -m limit --limit 100/sec --limit-burst 100 -m comment --comment \
"denied by profile DB inbound rule 1: deny tcp" -j NFLOG --nflog-prefix "cali-pi-abc/1:aa" \
--nflog-group 20
-A cali-pi-abc -p tcp -m comment --comment "profile DB inbound rule 1: deny tcp" -j DROP
COMMIT
'''


def test_a_prefix_is_named_from_the_kernel_and_looked_up_again_when_unknown():
    assert verdicts(SAVE) == {"cali-pi-abc/1:aa": "denied by profile DB inbound rule 1: deny tcp"}
    kernel, clock = KernelStub(), [0.0]
    drops = DropLog("nft", run=kernel.run, clock=lambda: clock[0])
    sample = nflog.Sample(1.0, 4, "", "cali1", "", "10.0.0.1", "10.0.0.2", "udp", 1, 2)
    chains = compute(snapshot(Profile("DB", ["DB"], [Rule("deny", "udp")], []),
                              endpoints=[endpoint("1", "h1", "10.0.0.2", ["DB"])]), "h1")
    rule = chains.tables[4]["filter"][profile_chain("DB", "inbound")][0]
    prefix = rule.split("--nflog-prefix ")[1]
    drops.add([nflog.Sample(**{**sample.__dict__, "prefix": prefix})])
    assert drops.ring[-1]["verdict"] == UNKNOWN          # not in the kernel yet
    kernel.run(["iptables-nft-restore", "--noflush"], "*filter\n:cali-x - [0:0]\n-A cali-x "
               + rule + "\nCOMMIT\n")
    drops.add([nflog.Sample(**{**sample.__dict__, "prefix": prefix})])
    assert drops.ring[-1]["verdict"] == UNKNOWN          # looked up at most once a second
    clock[0] = 1.0
    drops.add([nflog.Sample(**{**sample.__dict__, "prefix": prefix}),
               nflog.Sample(**{**sample.__dict__, "prefix": "someone-else"})])
    assert drops.ring[-1]["verdict"] == "denied by profile DB inbound rule 1: deny udp"
    assert [e["seq"] for e in drops.ring] == [1, 2, 3]  # not our prefix: not kept


def test_rule_counters_sum_versions_and_split_clauses_of_one_profile():
    text = {4: ('[5:420] -A cali-pi-X -m comment --comment "profile P inbound rule 1: allow" '
                '-j MARK --set-xmark 0x1000000/0x1000000\n'
                '[5:420] -A cali-pi-X -m mark --mark 0x1000000/0x1000000 -j RETURN\n'
                '[2:80] -A cali-pi-X -m limit --limit 100/sec -m comment --comment '
                '"denied by profile P inbound rule 2: deny" -j NFLOG --nflog-group 20\n'
                '[2:80] -A cali-pi-X -m comment --comment "profile P inbound rule 2: deny" '
                '-j DROP\n'
                '[9:9] -A cali-pi-OTHER -m comment --comment "profile Q inbound rule 1: '
                'deny" -j DROP\n'),
            6: ('[1:100] -A cali-pi-X -p tcp -m multiport --dports 1 -m comment --comment '
                '"profile P inbound rule 1: allow" -j MARK --set-xmark 0x1000000/0x1000000\n'
                '[3:300] -A cali-po-Y -m comment --comment "profile P outbound rule 1: allow"'
                ' -j MARK --set-xmark 0x1000000/0x1000000\n')}

    def run(argv, stdin="", check=True):
        assert argv[1:] == ["-c", "-t", "filter"]
        out = text[4 if argv[0].startswith("iptables") else 6]
        return out.replace("cali-pi-X", profile_chain("P", "inbound")).replace(
            "cali-po-Y", profile_chain("P", "outbound"))
    tables = {v: Tables(v, "nft", run) for v in (4, 6)}
    assert rule_counters("P", tables) == {
        "inbound": {1: {"packets": 6, "bytes": 520}, 2: {"packets": 2, "bytes": 80}},
        "outbound": {1: {"packets": 3, "bytes": 300}}}


def test_questions_are_answered_under_the_node_own_prefix_and_followers_get_new_drops():
    store, kernel = MemoryStore(), KernelStub()
    drops = DropLog("nft", run=kernel.run)
    answers = Answers(store, "h1", drops, {v: Tables(v, "nft", kernel.run) for v in (4, 6)})
    for n in range(ANSWER_DROPS + 5):
        drops.add([nflog.Sample(float(n), 4, "cali-x/1:00", "cali1", "", "10.0.0.1",
                                "10.0.0.2", "icmp", icmp_type=8)])
    lease = store.grant_lease(10)
    store.commit(Txn().put(keys.query("q1"), None, {"kind": "drops", "nodes": []}, lease=lease)
                 .put(keys.query("q2"), None, {"kind": "drops", "follow": True,
                                               "nodes": ["h1"]}, lease=lease)
                 .put(keys.query("q3"), None, {"kind": "drops", "nodes": ["h2"]}, lease=lease)
                 .put(keys.query("q4"), None, {"kind": "counters", "profile": "P",
                                               "nodes": ["h1"]}, lease=lease))
    answers.sync(True, [])
    one = store.get(keys.answer("h1", "q1")).json()
    assert one["node"] == "h1" and len(one["drops"]) == ANSWER_DROPS
    assert one["drops"][-1]["seq"] == ANSWER_DROPS + 5
    assert store.get(keys.answer("h2", "q3")) is None and \
        store.get(keys.answer("h1", "q3")) is None               # not asked of h1
    assert store.get(keys.answer("h1", "q4")).json()["counters"] == {
        "inbound": {}, "outbound": {}}
    assert keys.is_report(keys.answer("h1", "q1"))          # wakes no configuration watcher
    revision = store.get(keys.answer("h1", "q1")).mod_revision
    drops.add([nflog.Sample(99.0, 6, "cali-y/1:00", "", "cali2", "fd80::1", "fd80::2",
                            "icmpv6", icmp_type=128)])
    answers.sync(False, [])                                   # a poll: no etcd read
    follow = store.get(keys.answer("h1", "q2")).json()["drops"]
    assert follow[-1]["src"] == "fd80::1" and follow[-1]["seq"] == ANSWER_DROPS + 6
    assert store.get(keys.answer("h1", "q1")).mod_revision == revision   # one-off: once
    store.expire_lease(lease)
    answers.sync(True, [])
    assert not answers._open


def test_cluster_view_names_the_workloads_and_the_deciding_endpoint():
    web, db = endpoint("1", "h1", "10.20.0.1", ["WEB"]), endpoint("2", "h2", "10.20.0.2", ["DB"])
    cluster = Cluster(snapshot(endpoints=[web, db]))
    raw = {"time": 0.5, "seq": 3, "version": 4, "protocol": "tcp", "src": "10.20.0.1",
           "dst": "10.20.0.2", "src_port": 40000, "dst_port": 5432, "in_interface": "eth0",
           "out_interface": db.host_interface,
           "verdict": "denied by profile DB inbound rule 2: deny"}
    entry = cluster.entry("h2", raw)
    assert (entry["profile"], entry["direction"], entry["rule_number"]) == ("DB", "inbound", 2)
    assert (entry["endpoint_id"], entry["workload_id"]) == (db.endpoint_id, "w2")
    assert entry["src"]["workload_id"] == "w1" and entry["time"] == "1970-01-01T00:00:00.500Z"
    assert line(entry) == ("1970-01-01T00:00:00.500Z h2 tcp 10.20.0.1:40000 (w1) -> "
                           "10.20.0.2:5432 (w2): denied by profile DB inbound rule 2: deny [w2]")


class CountingKernel(KernelStub):
    """The stub, with packet counters per rule that a chain's rewrite resets
    and that ``iptables-restore --counters`` sets (``count`` plays traffic)."""

    def __init__(self, v6_restore_ignores_counters: bool = False):
        super().__init__()
        self.counts: dict[tuple[int, str], list[str]] = {}
        # As ip6tables-nft-restore 1.8.9 does.
        self.v6_ignores = v6_restore_ignores_counters

    def count(self, version: int, chain: str, position: int, counter: str) -> None:
        rules = self.rules(version, "filter", chain)
        self.counts.setdefault((version, chain), ["[0:0]"] * len(rules))[position] = counter

    def run(self, argv, stdin="", check=True, timeout=60, raw=False):
        version = 6 if argv[0].startswith("ip6") else 4
        out = super().run(argv, stdin, check=check, timeout=timeout, raw=raw)
        if argv[0].endswith("-restore"):
            written: dict[str, list[str]] = {}
            for line in stdin.splitlines():
                if line.startswith(":"):
                    written[line[1:].split()[0]] = []
                elif " -A " in f" {line}" and line.split("-A ")[1].split()[0] in written:
                    counter = line.split()[0] if line.startswith("[") else "[0:0]"
                    counter = "[0:0]" if version == 6 and self.v6_ignores else counter
                    written[line.split("-A ")[1].split()[0]].append(counter)
            for chain, counters in written.items():
                self.counts[(version, chain)] = counters
        elif argv[0].endswith("-save") and "-c" in argv:
            lines, seen = [], {}
            for line in out.splitlines():
                if line.startswith("[0:0] -A "):
                    chain = line.split()[2]
                    n = seen[chain] = seen.get(chain, -1) + 1
                    counters = self.counts.get((version, chain), [])
                    if n < len(counters):
                        line = counters[n] + line[len("[0:0]"):]
                lines.append(line)
            out = "\n".join(lines) + "\n"
        return out


def test_a_full_resync_keeps_the_counters_of_unchanged_chains_and_a_change_resets_them():
    kernel = CountingKernel()
    tables = Tables(4, "nft", kernel.run)
    rule = '-m comment --comment "profile P inbound rule 1: allow" -j ACCEPT'
    tables.apply("filter", {"cali-INPUT": [rule]}, full=True)
    kernel.count(4, "cali-INPUT", 0, "[5:420]")
    tables.apply("filter", {"cali-INPUT": [rule]}, full=True)      # rewritten whole, counted
    assert kernel.rules(4, "filter", "cali-INPUT") == [rule]
    assert "[5:420] -A cali-INPUT " in kernel.run(["iptables-nft-save", "-c", "-t", "filter"])
    tables.apply("filter", {"cali-INPUT": [rule, "-j DROP"]}, full=True)      # changed
    assert "[5:420]" not in kernel.run(["iptables-nft-save", "-c", "-t", "filter"])


def test_calicoctl_question_meets_the_node_answer_and_is_withdrawn():
    from cli.nodequery import Question
    store, kernel = MemoryStore(), KernelStub()
    drops = DropLog("nft", run=kernel.run)
    drops.add([nflog.Sample(1.0, 4, "cali-x/1:00", "cali1", "", "10.0.0.1", "10.0.0.2",
                            "udp", 5, 6)])
    node = Answers(store, "h1", drops, {v: Tables(v, "nft", kernel.run) for v in (4, 6)})
    with Question(store, ["h1", "h2"], kind="drops", follow=False) as question:
        assert store.get(keys.query(question.id)).json()["nodes"] == ["h1", "h2"]
        node.sync(True, [])
        got = question.wait(timeout=0)          # h2 never answers
        assert list(got) == ["h1"] and got["h1"]["drops"][0]["dst_port"] == 6
    assert store.get(keys.query(question.id)) is None


def test_ipv6_counts_a_restore_ignored_are_kept_by_the_agent_and_added_when_read():
    kernel = CountingKernel(v6_restore_ignores_counters=True)
    tables = Tables(6, "nft", kernel.run)
    assert not tables.restore_keeps_counters and Tables(6, "legacy").restore_keeps_counters
    rule = '-m comment --comment "profile P inbound rule 1: allow" -j ACCEPT'
    tables.apply("filter", {"cali-INPUT": [rule]}, full=True)
    kernel.count(6, "cali-INPUT", 0, "[5:420]")
    tables.apply("filter", {"cali-INPUT": [rule]}, full=True)      # the kernel's back at 0
    assert "[0:0] -A cali-INPUT" in kernel.run(["ip6tables-nft-save", "-c", "-t", "filter"])
    assert tables.counters("filter")["cali-INPUT"][0][:2] == (5, 420)
    kernel.count(6, "cali-INPUT", 0, "[2:100]")
    tables.apply("filter", {"cali-INPUT": [rule]}, full=True)      # and again
    assert tables.counters("filter")["cali-INPUT"][0][:2] == (7, 520)
    tables.apply("filter", {"cali-INPUT": [rule, "-j DROP"]})      # a change starts afresh
    assert tables.counters("filter")["cali-INPUT"][0][:2] == (0, 0)


def test_policy_drops_says_no_drops_and_names_a_silent_node(monkeypatch, capsys):
    import contextlib
    from cli import calicoctl, nodequery
    store = MemoryStore()
    for name, ip in (("h1", "192.0.2.1"), ("h2", "192.0.2.2")):
        store.commit(Txn().create(keys.node(name), {"name": name, "ipv4": ip}))
    monkeypatch.setattr(nodequery, "etcd", lambda: contextlib.nullcontext(store))
    monkeypatch.setattr(nodequery, "WAIT", 0.0)          # nobody answers here
    assert calicoctl.main(["policy", "drops"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("No drops.\n", "No answer from node(s) h1, h2 within 0s (is their "
                                          "policy agent running?).\n")
    assert calicoctl.main(["policy", "drops", "--node=h3"]) == 1
    assert capsys.readouterr().err == "No node named 'h3' is registered (nodes: h1, h2).\n"
    assert calicoctl.main(["policy", "drops", "--endpoint=abc"]) == 1
    assert capsys.readouterr().err == "No endpoint with id 'abc'.\n"
    assert store.list(keys.QUERIES) == []              # every question withdrawn
