"""calicoctl's -o: every command that shows state takes it, says so in its help
and in calicoctl's usage, rejects a bad value before doing anything, and
prints one kind of document that docs/cli-json.md documents."""

import json

import pytest
from docopt import docopt

from cli import calicoctl, output
from cli.errors import CliError
from tests.conftest import ROOT

# Each command that shows state (one per document kind; shownodes and profile
# show also with --detailed), as a user would type it.
SHOWS = [
    (["pool", "show", "--ipv4"], "PoolList"),
    (["ipam", "show"], "IpamUsage"),
    (["ipam", "show", "--ip=10.0.0.1"], "IpAllocation"),
    (["ipam", "check"], "IpamCheck"),
    (["check"], "RecordCheck"),
    (["container", "show"], "ContainerList"),
    (["shownodes"], "NodeList"),
    (["shownodes", "--detailed"], "NodeList"),
    (["status", "--name=h1"], "NodeStatus"),
    (["profile", "show"], "ProfileList"),
    (["profile", "show", "--detailed"], "ProfileList"),
    (["profile", "WEB", "tag", "show"], "ProfileTags"),
    (["profile", "WEB", "rule", "show"], "ProfileRules"),
    (["endpoint", "0123456789abcdef0123456789abcdef", "profile", "show"], "EndpointProfiles"),
    (["bgp", "default-node-as"], "BgpDefaultNodeAs"),
    (["bgp", "node-mesh"], "BgpNodeMesh"),
    (["bgp", "peer", "show", "--ipv6"], "BgpPeerList"),
    (["node", "bgp", "peer", "show", "--name=h1"], "NodeBgpPeerList"),
    (["bgppeer", "rr", "show"], "RouteReflectorList"),
    (["policy", "explain", "10.0.0.1", "10.0.0.2", "--protocol=tcp", "--port=80"],
     "PolicyExplanation"),
    (["policy", "endpoint-to-host"], "EndpointToHost"),
    (["policy", "drops", "--node=h1", "--endpoint=0123"], "PolicyDrops"),
    (["policy", "drops", "--follow"], "PolicyDrop"),
    (["profile", "WEB", "rule", "show", "--stats"], "ProfileRules"),
    (["certs", "show", "/nonexistent.pem"], "Certificate"),
]
IDS = [" ".join(argv[:3]) for argv, _ in SHOWS]
NOWHERE = {"CALICO_IPAM_ADDR": "127.0.0.1:1", "CALICO_BGP_ADDR": "127.0.0.1:1",
           "CALICO_POLICY_ADDR": "127.0.0.1:1", "CALICO_ENDPOINT_ADDR": "127.0.0.1:1",
           "ETCD_ENDPOINTS": "http://127.0.0.1:1", "CALICO_RPC_TIMEOUT": "1"}


def usage_lines(doc: str) -> list[str]:
    """A usage text's command lines, continuation lines joined."""
    lines = []
    for line in doc[doc.index("Usage:"):].split("\n\n")[0].splitlines()[1:]:
        if line.strip().startswith("calicoctl"):
            lines.append(line.strip())
        else:
            lines[-1] += " " + line.strip()
    return lines


def test_every_kind_has_a_command_here():
    assert {kind for _, kind in SHOWS} == set(output.KINDS)


@pytest.mark.parametrize("argv,kind", SHOWS, ids=IDS)
def test_each_show_command_takes_o_and_its_help_says_so(argv, kind):
    module = calicoctl.COMMANDS[argv[0]]
    args = docopt(module.__doc__, argv + ["-o", "json"], default_help=False)
    assert args["-o"] == "json"
    assert docopt(module.__doc__, argv, default_help=False)["-o"] is None
    options = module.__doc__[module.__doc__.index("Options:"):]
    assert "-o <FORMAT>" in options and "table (the default)" in options and "json" in options
    command = "calicoctl " + output.KINDS[kind].split(" --")[0]
    assert any(line.startswith(command) and "[-o <FORMAT>]" in line
               for line in usage_lines(calicoctl.__doc__)), command


def test_calicoctl_usage_and_the_commands_help_agree_on_o():
    top = usage_lines(calicoctl.__doc__)
    modules = {m for m in calicoctl.COMMANDS.values()}
    with_o = [line for m in modules for line in usage_lines(m.__doc__) if "-o <FORMAT>" in line]
    assert sorted(line for line in top if "-o <FORMAT>" in line) == sorted(with_o)


@pytest.mark.parametrize("argv,kind", SHOWS, ids=IDS)
@pytest.mark.parametrize("bad", ["yaml", "xml", "JSON"])
def test_a_bad_format_is_named_before_anything_is_done(argv, kind, bad, monkeypatch, capsys):
    for name, value in NOWHERE.items():     # a call made would say it could not reach it
        monkeypatch.setenv(name, value)
    assert calicoctl.main(argv + ["-o", bad]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"Invalid output format '{bad}': use table or json.\n")


@pytest.mark.parametrize("argv", [["pool", "add", "10.0.0.0/8"], ["bgp", "node-mesh", "on"],
                                  ["policy", "endpoint-to-host", "accept"],
                                  ["profile", "WEB", "rule", "json"],
                                  ["container", "add", "netns:x", "auto"]])
def test_commands_that_change_or_dump_refuse_o(argv, capsys):
    assert calicoctl.main(argv + ["-o", "json"]) == 1
    assert capsys.readouterr().err.startswith("Invalid arguments.\nUsage:")


def test_emit_prints_json_or_the_rendered_text(capsys):
    doc = {"pools": [{"cidr": "10.0.0.0/8", "block_size": 26}]}
    output.emit({"-o": "json"}, "PoolList", doc, lambda d: "never called")
    printed = capsys.readouterr().out
    assert json.loads(printed) == {"kind": "PoolList", "version": 1, **doc}
    assert printed.startswith('{\n  "kind": "PoolList",\n  "version": 1,')
    output.emit({"-o": None}, "PoolList", doc, lambda d: d["pools"][0]["cidr"])
    output.emit({"-o": "table"}, "PoolList", doc, lambda d: "")      # nothing, not a blank
    assert capsys.readouterr().out == "10.0.0.0/8\n"
    with pytest.raises(ValueError, match="undocumented output kind 'Pools'"):
        output.emit({}, "Pools", doc, str)
    with pytest.raises(CliError, match="Invalid output format 'csv': use table or json."):
        output.format_of({"-o": "csv"})


def test_the_json_shapes_are_documented():
    docs = (ROOT / "docs" / "cli-json.md").read_text()
    for kind, command in output.KINDS.items():
        section = docs[docs.index(f"\n## `{kind}`"):]
        section = section[:section.find("\n## ", 1)]
        assert f"`calicoctl {command}" in section, kind
        assert f'"kind": "{kind}"' in section, kind
    assert '"version": 1' in docs
    readme = (ROOT / "README.md").read_text()
    assert "docs/cli-json.md" in readme
