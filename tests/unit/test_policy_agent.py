"""The policy agent against an in-memory store and a stub kernel (no root, no
real iptables or ipset: the stub is the only command runner).

Tests assert on the state the stub holds (chains, rules, sets), never on the
commands the agent ran. A pass that is not full gets the events of a watch
of the store since the last pass (``events``), as the watch loop hands them.
"""

import ipaddress
import subprocess
import weakref

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.endpoint import ACTIVE, Endpoint, endpoint_id
from calicopy.model.ipam import Pool
from node.policy.agent import PROGRESS_TTL, Agent
from node.policy.commands import CommandError
from node.policy.dataplane import ACCEPT_MARK, profile_chain, tag_set
from tests.fakes import MemoryStore
from tests.kernel_stub import KernelStub
from tests.unit.test_rules import acting

NODE = "h1"
TABLES = [(4, "filter"), (4, "nat"), (6, "filter"), (6, "raw")]
WEB = {"id": "WEB", "inbound_rules": [{"action": "allow", "src_tag": "WEB"},
                                      {"action": "deny"}],
       "outbound_rules": [{"action": "allow"}]}
DB = {"id": "DB", "inbound_rules": [{"action": "allow", "protocol": "tcp", "src_tag": "WEB",
                                     "dst_ports": [5432]},
                                    {"action": "deny"}],
      "outbound_rules": [{"action": "allow"}]}


def put(store, key, value):
    assert store.commit(Txn().put(key, store.get(key), value))


def delete(store, key):
    assert store.commit(Txn().delete(store.get(key)))


def profile(store, name, rules, tags=None):
    put(store, keys.profile_tags(name), tags or [name])
    put(store, keys.profile_rules(name), rules)


def endpoint(store, workload, ips, profiles, node=NODE):
    ep_id = endpoint_id(node, "netns", workload, "eth0")
    ep = Endpoint(ep_id, node, "netns", workload, "eth0", f"/var/run/netns/{workload}",
                  ACTIVE, "02:00:00:00:00:" + ep_id[:2], profile_ids=list(profiles))
    ep.set_ips(ips)
    put(store, keys.endpoint(node, "netns", workload, ep_id), ep.to_json())
    return ep


def pool(store, cidr, nat_outgoing=False):
    net = ipaddress.ip_network(cidr)
    put(store, keys.pool(net), Pool.new(net, nat_outgoing=nat_outgoing).to_json())


def state(kernel):
    """Everything the stub holds that the agent owns or hooks."""
    return {"tables": {(v, t): kernel.chains(v, t) for v, t in TABLES}, "sets": kernel.sets()}


def full_sync_state(store):
    """What a fresh agent's full sync makes of the same store on a clean kernel."""
    kernel = KernelStub()
    Agent(store, NODE, "nft", run=kernel.run).sync(full=True)
    return state(kernel)


def changed_chains(before, after):
    return {(v, t, c) for (v, t), chains in after["tables"].items() for c in chains
            if before["tables"][v, t].get(c) != chains[c]} | \
           {(v, t, c) for (v, t), chains in before["tables"].items() for c in chains
            if c not in after["tables"][v, t]}


_feeds = weakref.WeakKeyDictionary()


def watched(agent):
    """The agent with a watch of its store, as the watch loop makes one."""
    queued = []
    agent.store.watch(keys.PREFIX, lambda response: queued.extend(response.events or []))
    _feeds[agent] = queued
    return agent


def events(agent):
    """The watch's events since the last call: what the loop hands the next pass."""
    queued = _feeds[agent]
    taken = list(queued)
    queued.clear()
    return taken


def loop_pass(agent, full=False):
    """One pass as the watch loop makes it: progress is reported only when the
    pass returned (WatchLoop calls report=agent._record after a sync)."""
    agent._record(agent.step(full, events(agent)))


def applied(store):
    kv = store.get(keys.policy_applied(NODE))
    return kv.json()["revision"] if kv else 0


@pytest.fixture(autouse=True)
def no_real_commands(monkeypatch):
    """The stub is the only runner: a process started here would be a real
    iptables or ipset (subprocess.run goes through Popen)."""
    def refuse(argv, *args, **kwargs):
        raise AssertionError(f"a real command was run: {argv}")
    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.fixture
def world():
    """Local endpoints web1 and db1 (dual stack) and app1 (IPv4 only), a remote
    one (web2), a NAT pool and another pool."""
    store, kernel = MemoryStore(), KernelStub()
    pool(store, "10.20.0.0/16", nat_outgoing=True)
    pool(store, "10.30.0.0/16")
    profile(store, "WEB", WEB)
    profile(store, "DB", DB)
    eps = {"web1": endpoint(store, "web1", ["10.20.0.1", "fd00::1"], ["WEB"]),
           "db1": endpoint(store, "db1", ["10.20.0.2", "fd00::2"], ["DB"]),
           "app1": endpoint(store, "app1", ["10.20.0.4"], ["WEB"]),
           "web2": endpoint(store, "web2", ["10.20.0.3", "fd00::3"], ["WEB"], node="h2")}
    return store, kernel, watched(Agent(store, NODE, "nft", run=kernel.run)), eps


def short(ep):
    return ep.endpoint_id[:11]


def test_first_sync_programs_dispatch_endpoints_profiles_sets_and_hooks(world):
    store, kernel, agent, eps = world
    web1, db1, app1 = eps["web1"], eps["db1"], eps["app1"]
    revision, _ = agent.sync(full=True)
    assert revision == store.revision
    # Hooks from the built-in chains, IPv4 and IPv6, and NAT.
    assert kernel.rules(4, "filter", "INPUT") == ["-j cali-INPUT"]
    assert kernel.rules(4, "filter", "FORWARD") == ["-j cali-FORWARD"]
    assert kernel.rules(6, "filter", "INPUT") == ["-j cali-INPUT"]
    assert kernel.rules(6, "filter", "FORWARD") == ["-j cali-FORWARD"]
    assert kernel.rules(4, "nat", "POSTROUTING") == ["-j cali-POSTROUTING"]
    assert kernel.rules(6, "raw", "PREROUTING") == ["-j cali-PREROUTING"]
    assert agent.hooks_in_place()
    # Dispatch: each local endpoint of the version, then a drop; web2 is elsewhere.
    from_wl = acting(kernel.rules(4, "filter", "cali-from-wl"))
    assert sorted(from_wl[:-1]) == sorted(f"-i cali{short(ep)} -g cali-fw-{short(ep)}"
                                          for ep in (web1, db1, app1))
    assert from_wl[-1].endswith("-j DROP")
    assert sorted(acting(kernel.rules(6, "filter", "cali-to-wl"))[:-1]) == sorted(
        f"-o cali{short(ep)} -g cali-tw-{short(ep)}" for ep in (web1, db1))
    assert f"cali-fw-{short(app1)}" not in kernel.chains(6, "filter")   # no IPv6 address
    assert not any(short(eps["web2"]) in c for v, t in TABLES for c in kernel.chains(v, t))
    # An endpoint's chains: its own source address and MAC only, then its profiles.
    fw = acting(kernel.rules(4, "filter", f"cali-fw-{short(db1)}"))
    assert f"-s 10.20.0.2/32 -g cali-fp-{short(db1)}" in fw
    assert any(f"! --mac-source {db1.mac}" in r and r.endswith("-j DROP") for r in fw)
    assert fw[-1].endswith("-j DROP")
    tw = kernel.rules(4, "filter", f"cali-tw-{short(db1)}")
    assert f"-j {profile_chain('DB', 'inbound')}" in tw and tw[-1].endswith("-j DROP")
    # A profile chain: one rule per rule (allow: mark, then return), in order.
    web4 = tag_set("WEB", 4)
    assert acting(kernel.rules(4, "filter", profile_chain("DB", "inbound"))) == [
        f"-p tcp -m set --match-set {web4} src -m multiport --dports 5432 -m comment "
        f'--comment "profile DB inbound rule 1: allow tcp from tag WEB to ports [5432]" '
        f"-j MARK --set-xmark {ACCEPT_MARK}",
        f"-m mark --mark {ACCEPT_MARK} -j RETURN",
        '-m comment --comment "profile DB inbound rule 2: deny" -j DROP']     # final
    assert f"--match-set {tag_set('WEB', 6)} src" in kernel.rules(
        6, "filter", profile_chain("DB", "inbound"))[0]
    # Tag sets hold every member cluster-wide, per version; pools for NAT.
    sets = kernel.sets()
    assert sets[web4] == {"10.20.0.1", "10.20.0.3", "10.20.0.4"}
    assert sets[tag_set("WEB", 6)] == {"fd00::1", "fd00::3"}
    assert kernel.set_type(tag_set("WEB", 6)) == ("hash:ip", "inet6")
    assert tag_set("DB", 4) not in sets                    # no rule names tag DB
    assert sets["cali4-pools-masq"] == {"10.20.0.0/16"}
    assert sets["cali4-pools-all"] == {"10.20.0.0/16", "10.30.0.0/16"}
    [masq] = kernel.rules(4, "nat", "cali-POSTROUTING")
    assert "--match-set cali4-pools-masq src" in masq and masq.endswith("-j MASQUERADE")


def test_host_rules_are_kept_and_our_hooks_go_first(world):
    store, kernel, agent, _ = world
    kernel.iptables(4, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
    agent.sync(full=True)
    assert kernel.rules(4, "filter", "INPUT") == ["-j cali-INPUT", "-i lo -j ACCEPT"]
    agent.sync(full=True)                                  # no second hook
    assert kernel.rules(4, "filter", "INPUT") == ["-j cali-INPUT", "-i lo -j ACCEPT"]


def test_a_rule_update_rewrites_only_that_profile_s_chains(world):
    store, kernel, agent, _ = world
    agent.sync(full=True)
    before = state(kernel)
    DB2 = dict(DB, inbound_rules=[{"action": "allow", "protocol": "tcp",
                                   "src_net": "10.0.0.0/8", "dst_ports": [22]}]
               + DB["inbound_rules"])
    profile(store, "DB", DB2)
    revision, stats = agent.sync(events=events(agent))
    after = state(kernel)
    chain = profile_chain("DB", "inbound")
    assert changed_chains(before, after) == {(4, "filter", chain), (6, "filter", chain)}
    assert stats["chains"] == 2 and stats["sets"] == 0 and revision == store.revision
    assert "-s 10.0.0.0/8" in kernel.rules(4, "filter", chain)[0]
    assert "10.0.0.0/8" not in str(kernel.rules(6, "filter", chain))   # renumbered only
    assert after == full_sync_state(store)


def test_a_new_endpoint_adds_its_chains_and_set_members_only(world):
    store, kernel, agent, eps = world
    agent.sync(full=True)
    before = state(kernel)
    web3 = endpoint(store, "web3", ["10.20.0.5"], ["WEB"])
    agent.step(False, events(agent))
    after = state(kernel)
    ours = {f"cali-{kind}-{short(web3)}" for kind in ("fw", "fp", "tw")}
    assert changed_chains(before, after) == {(4, "filter", c) for c in
                                             ours | {"cali-from-wl", "cali-to-wl"}}
    assert f"-i cali{short(web3)} -g cali-fw-{short(web3)}" in kernel.rules(
        4, "filter", "cali-from-wl")
    assert after["sets"][tag_set("WEB", 4)] == before["sets"][tag_set("WEB", 4)] | {"10.20.0.5"}
    assert {k: v for k, v in after["sets"].items() if k != tag_set("WEB", 4)} == \
        {k: v for k, v in before["sets"].items() if k != tag_set("WEB", 4)}
    assert after == full_sync_state(store)
    # A member on another node changes the tag's set and nothing else.
    endpoint(store, "web4", ["10.20.0.6"], ["WEB"], node="h2")
    agent.step(False, events(agent))
    assert changed_chains(after, state(kernel)) == set()
    assert "10.20.0.6" in kernel.sets()[tag_set("WEB", 4)]
    assert state(kernel) == full_sync_state(store)


def test_an_endpoint_removed_takes_its_chains_with_it(world):
    store, kernel, agent, eps = world
    agent.sync(full=True)
    db1 = eps["db1"]
    delete(store, keys.endpoint(NODE, "netns", "db1", db1.endpoint_id))
    agent.step(False, events(agent))
    chains = kernel.chains(4, "filter")
    assert not any(short(db1) in name or short(db1) in str(rules)
                   for name, rules in chains.items())
    assert profile_chain("DB", "inbound") not in chains       # no local member uses it
    assert state(kernel) == full_sync_state(store)


def test_hooks_an_operator_deleted_are_put_back(world):
    store, kernel, agent, _ = world
    agent.sync(full=True)
    before = state(kernel)
    kernel.iptables(4, "-D", "INPUT", "-j", "cali-INPUT")
    kernel.iptables(6, "-F", "FORWARD")
    kernel.iptables(4, "-t", "nat", "-F", "POSTROUTING")
    assert not agent.hooks_in_place()
    agent.step(False, events(agent))
    assert agent.hooks_in_place()
    assert state(kernel) == before


def test_an_operator_s_conditional_jump_is_not_taken_for_our_hook(world):
    store, kernel, agent, _ = world
    agent.sync(full=True)
    kernel.iptables(4, "-D", "INPUT", "-j", "cali-INPUT")
    kernel.iptables(4, "-A", "INPUT", "-i", "eth0", "-j", "cali-INPUT")
    assert not agent.hooks_in_place()
    agent.step(False, events(agent))
    assert agent.hooks_in_place()
    assert ["-j", "cali-INPUT"] in [r.split() for r in kernel.rules(4, "filter", "INPUT")]


def test_a_full_resync_repairs_chains_edited_by_hand(world):
    store, kernel, agent, eps = world
    agent.sync(full=True)
    before = state(kernel)
    kernel.iptables(4, "-F", "cali-from-wl")
    kernel.iptables(4, "-I", "cali-from-wl", "-j", "ACCEPT")
    agent.step(full=True)
    assert state(kernel) == before


def test_a_tag_no_longer_referenced_loses_its_set_after_the_rules(world):
    store, kernel, agent, eps = world
    profile(store, "ADMIN", {"inbound_rules": [{"action": "allow", "src_tag": "OPS"}]})
    endpoint(store, "db1", ["10.20.0.2", "fd00::2"], ["DB", "ADMIN"])
    endpoint(store, "ops1", ["10.20.0.9"], ["OPS"], node="h2")
    profile(store, "OPS", {"outbound_rules": [{"action": "allow"}]})
    agent.sync(full=True)
    ops4 = tag_set("OPS", 4)
    assert kernel.sets()[ops4] == {"10.20.0.9"}
    assert f"--match-set {ops4} src" in kernel.rules(4, "filter",
                                                     profile_chain("ADMIN", "inbound"))[0]
    # The rule goes: the set goes too (the stub refuses to destroy a set in use,
    # so this also shows the rules changed first).
    profile(store, "ADMIN", {"inbound_rules": [{"action": "allow", "protocol": "icmp"}]})
    _, stats = agent.sync(events=events(agent))
    assert ops4 not in kernel.sets() and tag_set("OPS", 6) not in kernel.sets()
    assert stats["stale_sets"] == 2
    assert state(kernel) == full_sync_state(store)
    # A whole profile removed while an endpoint still names it: chains and sets go.
    profile(store, "ADMIN", {"inbound_rules": [{"action": "allow", "src_tag": "OPS"}]})
    agent.sync(events=events(agent))
    delete(store, keys.profile_rules("ADMIN"))
    delete(store, keys.profile_tags("ADMIN"))
    agent.step(False, events(agent))
    assert ops4 not in kernel.sets()
    assert profile_chain("ADMIN", "inbound") not in kernel.chains(4, "filter")
    assert state(kernel) == full_sync_state(store)


@pytest.mark.parametrize("tool", ["ipset", "iptables", "ip6tables"])
def test_a_failed_restore_changes_nothing_and_the_next_pass_recovers(world, tool):
    store, kernel, agent, _ = world
    loop_pass(agent, full=True)
    first = store.revision - 1                  # the report itself is a commit
    assert applied(store) == first
    before = state(kernel)
    # A change to sets and to both versions' chains, and a new local endpoint
    # (progress is what its add waits for).
    profile(store, "DB", dict(DB, inbound_rules=[{"action": "allow", "src_tag": "DB"}]
                              + DB["inbound_rules"]))
    endpoint(store, "db3", ["10.20.0.9", "fd00::9"], ["DB"])
    wanted = store.revision
    kernel.fail_restores(1, tool=tool)
    with pytest.raises(CommandError, match="injected"):
        loop_pass(agent)
    assert applied(store) == first                       # no progress claimed
    now = state(kernel)
    if tool == "ipset":                                  # the first write: nothing changed
        assert now == before
    else:                                                # that version's tables are as before
        version = 4 if tool == "iptables" else 6
        assert {k: v for k, v in now["tables"].items() if k[0] == version} == \
            {k: v for k, v in before["tables"].items() if k[0] == version}
    # The next pass, even an incremental one, does what the failed one did not.
    revision, _ = agent.sync(events=events(agent))
    assert revision == wanted and state(kernel) == full_sync_state(store)
    loop_pass(agent)
    assert applied(store) == wanted


def test_sets_made_by_a_failed_pass_are_cleaned_up_when_no_longer_wanted(world):
    store, kernel, agent, _ = world
    agent.sync(full=True)
    old = dict(DB)
    profile(store, "DB", dict(DB, inbound_rules=[{"action": "allow", "src_tag": "DB"}]
                              + DB["inbound_rules"]))
    kernel.fail_restores(1, tool="iptables")
    with pytest.raises(CommandError):
        agent.step(False, events(agent))
    assert tag_set("DB", 4) in kernel.sets()             # the sets went in, the rules not
    profile(store, "DB", old)                            # and the change is undone
    agent.sync(events=events(agent))
    assert tag_set("DB", 4) not in kernel.sets()
    assert state(kernel) == full_sync_state(store)


def test_progress_is_written_when_a_local_endpoint_changed_and_only_then(world):
    """What an endpoint add waits for is written; changes elsewhere and idle
    passes cost etcd nothing."""
    store, kernel, agent, _ = world
    loop_pass(agent, full=True)
    first = applied(store)
    assert first == store.revision - 1          # the report itself is a commit
    commits = store.commits
    for _ in range(3):                          # idle, and a full resync
        loop_pass(agent)
    loop_pass(agent, full=True)
    profile(store, "DB", dict(DB, outbound_rules=[{"action": "deny"}]))       # rules
    endpoint(store, "web3", ["10.20.0.7"], ["WEB"], node="h2")                # elsewhere
    loop_pass(agent)
    assert store.commits == commits + 3 and applied(store) == first     # theirs, not ours
    assert "10.20.0.7" in kernel.sets()[tag_set("WEB", 4)]   # programmed all the same
    ep = endpoint(store, "web4", ["10.20.0.8"], ["WEB"])       # as the endpoint service does
    record = store.get(keys.endpoint(NODE, "netns", "web4", ep.endpoint_id)).mod_revision
    loop_pass(agent)
    assert applied(store) >= record
    assert store.commits == commits + 5


def test_progress_lives_under_a_lease_kept_alive_without_writes(world):
    store, kernel, agent, _ = world
    clock = [0.0]
    agent.progress._clock = lambda: clock[0]
    loop_pass(agent, full=True)
    lease = agent.progress._lease
    assert lease and keys.policy_applied(NODE) in store.leases[lease]
    commits, written = store.commits, applied(store)
    for _ in range(4):
        clock[0] += PROGRESS_TTL / 3
        agent.progress.keepalive()
    assert store.keepalives == 4 and store.commits == commits
    store.expire_lease(lease)                   # e.g. etcd was out of reach that long
    assert applied(store) == 0
    clock[0] += PROGRESS_TTL / 3
    agent.progress.keepalive()                  # notices, writes it again
    assert applied(store) == written and agent.progress._lease != lease


def test_ip_in_ip_only_from_the_cluster_nodes_while_a_pool_uses_it(world):
    store, kernel, agent, _ = world
    agent.sync(full=True)
    assert not any("-p 4" in r for r in kernel.rules(4, "filter", "cali-INPUT"))
    assert "cali4-hosts" not in kernel.sets()
    for name, ip in (("h1", "172.30.0.2"), ("h2", "172.30.1.2")):
        put(store, keys.node(name), {"name": name, "ipv4": ip, "ipv6": "fd99::9"})
    net = ipaddress.ip_network("10.30.0.0/16")
    put(store, keys.pool(net), Pool.new(net, ipip_mode="cross-subnet").to_json())
    agent.sync(events=events(agent))
    assert kernel.sets()["cali4-hosts"] == {"172.30.0.2", "172.30.1.2"}
    rules = kernel.rules(4, "filter", "cali-INPUT")
    assert rules[-2].startswith("-p 4 -m set --match-set cali4-hosts src")
    assert rules[-2].endswith("-j ACCEPT") and rules[-1].endswith("-j DROP")
    assert rules[-1].startswith("-p 4 ")
    assert not any("-p 4" in r for r in kernel.rules(6, "filter", "cali-INPUT"))
    put(store, keys.pool(net), Pool.new(net).to_json())           # back to never
    agent.sync(events=events(agent))
    assert not any("-p 4" in r for r in kernel.rules(4, "filter", "cali-INPUT"))


# Incremental passes ------------------------------------------------------------------

TAGS = ["WEB", "DB", "OPS", "X"]
NAMES = ["WEB", "DB", "OPS", "ADMIN", "GONE"]
ADDRESSES = ["10.20.0.1", "10.20.0.2", "10.20.0.3", "10.30.0.1", "fd00::1", "fd00::2"]


def random_change(store, rnd):
    """One change of the kind etcd sees, good or malformed, picked by ``rnd``."""
    kind = rnd.randrange(10)
    workload, node = f"w{rnd.randrange(8)}", rnd.choice([NODE, NODE, "h2"])
    ep_key = keys.endpoint(node, "netns", workload, endpoint_id(node, "netns", workload, "eth0"))
    name = rnd.choice(NAMES)
    if kind <= 2:
        ep = Endpoint(endpoint_id(node, "netns", workload, "eth0"), node, "netns", workload,
                      "eth0", f"/var/run/netns/{workload}",
                      rnd.choice([ACTIVE, ACTIVE, ACTIVE, "pending"]),
                      rnd.choice(["02:00:00:00:00:0a", "02:00:00:00:00:0b", ""]),
                      profile_ids=rnd.choices(NAMES, k=rnd.randrange(4)))
        ep.set_ips(rnd.sample(ADDRESSES, rnd.randrange(1, 4)))
        put(store, ep_key, ep.to_json() if rnd.random() > 0.1 else
            {**ep.to_json(), "ipv4_nets": ["bogus/32"]})
    elif kind == 3 and store.get(ep_key):
        delete(store, ep_key)
    elif kind == 4:
        put(store, keys.profile_tags(name), rnd.choices(TAGS, k=rnd.randrange(3))
            if rnd.random() > 0.1 else "not-a-list")
    elif kind == 5:
        rules = [{"action": rnd.choice(["allow", "deny"]),
                  rnd.choice(["src_tag", "dst_tag"]): rnd.choice(TAGS)}
                 for _ in range(rnd.randrange(3))]
        put(store, keys.profile_rules(name), rnd.choice([
            {"inbound_rules": rules, "outbound_rules": rules[:1]},
            {"inbound_rules": [{"nope": 1}]}, "{not json"]))
    elif kind == 6:
        key = rnd.choice([keys.profile_tags(name), keys.profile_rules(name)])
        if store.get(key):
            delete(store, key)
    elif kind == 7:
        net = ipaddress.ip_network(rnd.choice(["10.20.0.0/16", "10.30.0.0/16", "fd00::/64"]))
        if rnd.random() < 0.3 and store.get(keys.pool(net)):
            delete(store, keys.pool(net))
        else:
            put(store, keys.pool(net), Pool.new(
                net, nat_outgoing=rnd.random() < 0.5,
                ipip_mode=rnd.choice(["never", "always"]) if net.version == 4 else "never"
            ).to_json())
    elif kind == 8:
        host = rnd.choice([NODE, "h2"])
        put(store, keys.node(host), rnd.choice([
            {"name": host, "ipv4": rnd.choice(["172.30.0.2", "172.30.0.3"])},
            {"name": host}]))
    else:
        put(store, keys.ENDPOINT_TO_HOST_ACTION, rnd.choice(["drop", "return", "accept",
                                                              "maybe"]))


@pytest.mark.parametrize("seed", range(4))
def test_incremental_passes_program_what_a_full_resync_would(seed):
    """Whatever the order of changes (malformed records, endpoints that share
    addresses, profiles that come and go, full resyncs between), each pass
    leaves the kernel and the quarantine as a fresh agent's full sync would."""
    import random
    rnd = random.Random(seed)
    store, kernel = MemoryStore(), KernelStub()
    agent = watched(Agent(store, NODE, "nft", run=kernel.run, generation=kernel.generation))
    agent.sync(full=True)
    for step in range(80):
        for _ in range(rnd.randrange(1, 4)):
            random_change(store, rnd)
        full = rnd.random() < 0.1
        revision, _ = agent.sync(full=full, events=events(agent))
        assert revision == store.revision
        fresh_kernel = KernelStub()
        fresh = Agent(store, NODE, "nft", run=fresh_kernel.run)
        fresh.sync(full=True)
        assert state(kernel) == state(fresh_kernel), f"step {step}"
        assert agent.quarantine.records == fresh.quarantine.records, f"step {step}"


def test_a_remote_member_joining_costs_one_set_member(world):
    store, kernel, agent, _ = world
    agent.sync(full=True)
    before = state(kernel)
    endpoint(store, "web9", ["10.20.0.9"], ["WEB"], node="h2")
    _, stats = agent.sync(events=events(agent))
    assert stats == {"sets": 0, "members": 1, "chains": 0, "stale_sets": 0}
    assert kernel.sets()[tag_set("WEB", 4)] == before["sets"][tag_set("WEB", 4)] | {"10.20.0.9"}
    endpoint(store, "web9", ["10.20.0.9"], ["DB"], node="h2")     # leaves WEB (DB is no tag)
    _, stats = agent.sync(events=events(agent))
    assert stats == {"sets": 0, "members": 1, "chains": 0, "stale_sets": 0}
    assert state(kernel) == before


def counting_nft_agent(store, kernel):
    """An nft agent over the kernel stub with its ruleset generation, and the
    list of the programs it starts."""
    started = []

    def run(argv, *args, **kwargs):
        started.append(argv[0])
        return kernel.run(argv, *args, **kwargs)
    return watched(Agent(store, NODE, "nft", run=run, generation=kernel.generation)), started


def test_an_idle_pass_runs_nothing_until_someone_changes_the_rules(world):
    """With the ruleset generation, an idle pass starts no process; a hook
    an operator deleted (the generation moves) is found and put back."""
    store, kernel, _, _ = world
    agent, started = counting_nft_agent(store, kernel)
    agent.sync(full=True)
    endpoint(store, "web3", ["10.20.0.5"], ["WEB"])       # our own restores: still trusted
    agent.sync(events=events(agent))
    started.clear()
    for _ in range(3):
        agent.step(False, events(agent))
    assert started == []
    before = state(kernel)
    kernel.iptables(4, "-D", "FORWARD", "-j", "cali-FORWARD")
    agent.step(False, events(agent))
    assert state(kernel) == before
    started.clear()
    agent.step(False, events(agent))
    assert started == []


def test_a_resync_rewrites_the_chains_only_when_someone_else_changed_the_rules(world):
    """With the ruleset generation, a periodic full pass after only our own
    writes starts no iptables process; after an operator edited one of our
    chains, it reads the rules back and repairs them."""
    store, kernel, _, _ = world
    agent, started = counting_nft_agent(store, kernel)
    agent.step(True, events(agent))
    endpoint(store, "web3", ["10.20.0.5"], ["WEB"])
    agent.step(False, events(agent))
    before = state(kernel)
    started.clear()
    agent.step(True, events(agent))
    assert not [tool for tool in started if tool.startswith(("iptables", "ip6tables"))]
    kernel.iptables(4, "-A", profile_chain("WEB", "inbound"), "-j", "ACCEPT")
    agent.step(True, events(agent))
    assert state(kernel) == before == full_sync_state(store)


def test_the_records_of_one_commit_are_all_applied(world):
    """A commit's events share its revision: a profile created whole (tags and
    rules) with a local endpoint in it, in one transaction, is all programmed."""
    store, kernel, agent, _ = world
    agent.sync(full=True)
    ep_id = endpoint_id(NODE, "netns", "ops1", "eth0")
    ops1 = Endpoint(ep_id, NODE, "netns", "ops1", "eth0", "/var/run/netns/ops1", ACTIVE,
                    "02:00:00:00:00:0c", profile_ids=["OPS"])
    ops1.set_ips(["10.20.0.7"])
    assert store.commit(Txn().put(keys.profile_tags("OPS"), None, ["OPS"])
                        .put(keys.profile_rules("OPS"), None,
                             {"inbound_rules": [{"action": "allow", "src_tag": "OPS"}]})
                        .put(keys.endpoint(NODE, "netns", "ops1", ep_id), None, ops1.to_json()))
    revision, _ = agent.sync(events=events(agent))
    assert revision == store.revision
    assert kernel.sets()[tag_set("OPS", 4)] == {"10.20.0.7"}
    assert state(kernel) == full_sync_state(store)
