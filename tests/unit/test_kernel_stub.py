"""The kernel stub behaves as the tools do, so agent tests against it mean something."""

import pytest

from node.policy.commands import CommandError
from tests.kernel_stub import KernelStub

RESTORE = ["iptables-nft-restore", "--noflush", "--wait"]


@pytest.fixture
def k():
    return KernelStub()


def restore(k, *lines, tool=RESTORE):
    return k.run(tool, "\n".join(lines) + "\n")


def test_save_prints_the_tables_as_iptables_save_does(k):
    restore(k, "*filter", ":cali-x - [0:0]", '-A cali-x -m comment --comment "a b" -j DROP',
            "-I INPUT 1 -j cali-x", "COMMIT")
    out = k.run(["iptables-nft-save", "-t", "filter"])
    assert out.splitlines()[1:] == [
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":cali-x - [0:0]", "-A INPUT -j cali-x", '-A cali-x -m comment --comment "a b" -j DROP',
        "COMMIT"]
    # What save prints, restore takes back (without --noflush: the table is replaced).
    other = KernelStub()
    other.run(["iptables-nft-restore"], out)
    assert other.chains(4, "filter") == k.chains(4, "filter")
    assert k.chains(6, "filter")["INPUT"] == []          # IPv6 is separate


def test_declaring_a_chain_creates_or_flushes_it(k):
    restore(k, "*filter", ":cali-x - [0:0]", "-A cali-x -j ACCEPT", "-A cali-x -j DROP",
            "COMMIT")
    restore(k, "*filter", ":cali-x - [0:0]", "-A cali-x -j RETURN", "COMMIT")
    assert k.rules(4, "filter", "cali-x") == ["-j RETURN"]
    restore(k, "*filter", "-I cali-x 2 -j DROP", "-I cali-x -j ACCEPT", "COMMIT")
    assert k.rules(4, "filter", "cali-x") == ["-j ACCEPT", "-j RETURN", "-j DROP"]


@pytest.mark.parametrize("lines,complaint", [
    (["-A cali-missing -j DROP"], "No chain/target/match by that name"),
    ([":cali-x - [0:0]", "-A cali-x -j cali-missing"], "Couldn't load target 'cali-missing'"),
    ([":cali-x - [0:0]", "-A cali-x -g ACCEPT"], "Couldn't load target 'ACCEPT'"),
    ([":cali-x - [0:0]", "-A cali-x -j INPUT"], "Couldn't load target 'INPUT'"),
    ([":cali-x - [0:0]", "-A cali-x -m set --match-set nope src -j DROP"],
     "Set nope doesn't exist"),
    ([":cali-x - [0:0]", "-A cali-x --match-set s4 src -j DROP"], "unknown option"),
    ([":cali-x - [0:0]", "-A cali-x -m set --match-set s6 src -j DROP"],
     "protocol family of set s6 is inet6"),
    ([":cali-x - [0:0]", "-A cali-x -s fd00::1/128 -j DROP"], "host/network"),
    ([":cali-x - [0:0]", "-A cali-x -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT"],
     "Couldn't load match 'icmp6'"),
    ([":cali-x - [0:0]", "-A cali-x -j MASQUERADE"], "only valid in nat table"),
    ([":cali-this-name-is-far-too-long-x - [0:0]"], "too long"),
    ([":cali-x - [0:0]", "-A cali-x -j"], "requires an argument"),
    (["-X cali-used"], "Too many links"),
    (["-X cali-full"], "not empty"),
    (["-X INPUT"], "built-in"),
    (["-I INPUT 3 -j ACCEPT"], "Index of insertion too big"),
    ([":cali-x - [0:0]", '-A cali-x -m comment --comment "unclosed -j DROP'], "quotation"),
])
def test_restore_refuses_what_the_kernel_refuses_and_changes_nothing(k, lines, complaint):
    k.run(["ipset", "restore"], "create s4 hash:ip family inet\ncreate s6 hash:ip family inet6\n")
    restore(k, "*filter", ":cali-used - [0:0]", ":cali-full - [0:0]", "-A cali-full -j DROP",
            "-A INPUT -j cali-used", "COMMIT")
    before = k.chains(4, "filter")
    with pytest.raises(CommandError, match=complaint) as err:
        restore(k, "*filter", ":cali-new - [0:0]", "-A cali-new -j ACCEPT", *lines, "COMMIT")
    assert err.value.code == 1 and err.value.argv == RESTORE and "*filter" in err.value.stdin
    assert k.chains(4, "filter") == before                      # all or nothing


def test_restore_needs_commit_and_a_known_table(k):
    for lines in (["*filter", ":cali-x - [0:0]"], ["*mangle", "COMMIT"], ["-A INPUT -j DROP"]):
        assert k.run(RESTORE, "\n".join(lines) + "\n", raw=True) == 1
    assert "cali-x" not in k.chains(4, "filter")


def test_chains_are_deleted_once_unreferenced_and_empty(k):
    restore(k, "*filter", ":cali-a - [0:0]", ":cali-b - [0:0]", "-A cali-a -g cali-b",
            "-A FORWARD -j cali-a", "COMMIT")
    restore(k, "*filter", "-D FORWARD -j cali-a", "-F cali-a", "-F cali-b", "-X cali-a",
            "-X cali-b", "COMMIT")
    assert set(k.chains(4, "filter")) == {"INPUT", "FORWARD", "OUTPUT"}


def test_check_answers_by_exit_code_and_operators_can_delete_rules(k):
    restore(k, "*nat", ":cali-POSTROUTING - [0:0]", "-I POSTROUTING 1 -j cali-POSTROUTING",
            "COMMIT")
    check = ["iptables-nft", "-w", "-t", "nat", "-C", "POSTROUTING", "-j", "cali-POSTROUTING"]
    assert k.run(check, check=False, raw=True) == 0
    assert k.run(check[:5] + ["INPUT"] + check[6:], check=False, raw=True) == 1
    k.iptables(4, "-t", "nat", "-D", "POSTROUTING", "-j", "cali-POSTROUTING")
    assert k.run(check, check=False, raw=True) == 1
    with pytest.raises(CommandError) as err:
        k.run(check)
    assert err.value.code == 1 and "Bad rule" in err.value.stderr
    assert k.run(check, check=False) == ""                      # output, not an exception


def test_the_other_backend_is_not_installed(k):
    with pytest.raises(FileNotFoundError):
        k.run(["iptables-legacy-save"])
    assert KernelStub("legacy").run(["ip6tables-legacy-save", "-t", "filter"]).count("COMMIT")


def test_ipset_restore_builds_swaps_and_destroys(k):
    k.run(["ipset", "restore", "-exist"], "\n".join([
        "create s hash:ip family inet maxelem 1048576",
        "create s-tmp hash:ip family inet maxelem 1048576", "flush s-tmp",
        "add s-tmp 10.0.0.2", "add s-tmp 10.0.0.1/32", "swap s-tmp s", "destroy s-tmp",
        "create n hash:net family inet", "add n 10.20.1.0/16", "add n 10.0.0.1/32"]) + "\n")
    assert k.sets() == {"s": {"10.0.0.1", "10.0.0.2"}, "n": {"10.20.0.0/16", "10.0.0.1"}}
    assert k.set_type("s") == ("hash:ip", "inet")
    saved = k.run(["ipset", "save"]).splitlines()
    assert saved[0].startswith("create s hash:ip family inet ") and "add s 10.0.0.1" in saved
    # Again with -exist: creating what exists and adding what is there are fine.
    k.run(["ipset", "restore", "-exist"], "create s hash:ip family inet maxelem 1048576\n"
                                          "add s 10.0.0.1\n")
    assert k.run(["ipset", "restore"], "add s 10.0.0.1\n", raw=True) == 1


@pytest.mark.parametrize("script,complaint", [
    ("destroy nope", "does not exist"),
    ("add s fd00::1", "resolving to IPv4 address failed"),
    ("create s hash:net family inet", "already exists"),
    ("create s6 hash:ip family inet6\nswap s s6", "type does not match"),
    ("create cali4-t-this-name-is-too-long-for-ipset hash:ip", "longer than 31"),
    ("destroy used", "it is in use by a kernel component"),
])
def test_ipset_restore_refuses_and_changes_nothing(k, script, complaint):
    k.run(["ipset", "restore"], "create s hash:ip family inet\ncreate used hash:ip\n")
    restore(k, "*filter", "-A INPUT -m set --match-set used src -j DROP", "COMMIT")
    with pytest.raises(CommandError, match=complaint):
        k.run(["ipset", "restore", "-exist"], "add s 10.0.0.9\n" + script + "\n")
    assert k.sets() == {"s": set(), "used": set()}
    k.iptables(4, "-F", "INPUT")                    # unreferenced now: it can go
    k.run(["ipset", "destroy", "used"])
    assert "used" not in k.sets()


def test_injected_failures_fail_the_next_restores_without_changing_anything(k):
    k.fail_restores(2, tool="iptables")
    for _ in range(2):
        with pytest.raises(CommandError, match="injected"):
            restore(k, "*filter", ":cali-x - [0:0]", "COMMIT")
    k.run(["ipset", "restore"], "create s hash:ip\n")        # ipset is not affected
    assert "cali-x" not in k.chains(4, "filter")
    restore(k, "*filter", ":cali-x - [0:0]", "COMMIT")
    assert "cali-x" in k.chains(4, "filter")
    k.fail_restores()
    assert k.run(["ipset", "restore"], "create t hash:ip\n", raw=True) == 1
    assert set(k.sets()) == {"s"}
