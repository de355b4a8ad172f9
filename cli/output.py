"""How calicoctl prints what it shows: tables for people, JSON for programs.

A command that shows state builds one document (a dict: snake_case keys,
numbers as numbers, addresses as strings, absent values as null, lists in
the order the table shows them) and hands it to ``emit`` with the function
that renders it as text; ``emit`` prints one or the other, so the table and
the JSON cannot say different things. The format comes from the command's
``-o <FORMAT>`` option: ``table`` (the default) or ``json``.

Invariants: a JSON document is one object whose first keys are ``kind`` (one
of KINDS: which command's shape it is) and ``version`` (SHAPE_VERSION); within
a version keys are only ever added, never removed or given another meaning,
as docs/cli-json.md (which documents every kind) promises. Nothing else is
written to stdout in JSON mode; errors stay one line on stderr.
"""

from __future__ import annotations

import json
from typing import Callable

from cli.errors import CliError

FORMATS = ("table", "json")
SHAPE_VERSION = 1

# Every document kind, and the command that prints it (docs/cli-json.md has a
# section per kind; a unit test checks that).
KINDS = {
    "PoolList": "pool show",
    "IpamUsage": "ipam show",
    "IpAllocation": "ipam show --ip",
    "IpamCheck": "ipam check",
    "RecordCheck": "check",
    "ContainerList": "container show",
    "NodeList": "shownodes",
    "NodeStatus": "status",
    "ProfileList": "profile show",
    "ProfileTags": "profile <PROFILE> tag show",
    "ProfileRules": "profile <PROFILE> rule show",
    "EndpointProfiles": "endpoint <ENDPOINT_ID> profile show",
    "BgpDefaultNodeAs": "bgp default-node-as",
    "BgpNodeMesh": "bgp node-mesh",
    "BgpPeerList": "bgp peer show",
    "NodeBgpPeerList": "node bgp peer show",
    "RouteReflectorList": "bgppeer rr show",
    "PolicyExplanation": "policy explain",
    "EndpointToHost": "policy endpoint-to-host",
    "PolicyDrops": "policy drops",
    "PolicyDrop": "policy drops --follow",
    "Certificate": "certs show",
}


def format_of(args: dict) -> str:
    """The output format a command was given (``-o``), checked."""
    value = args.get("-o")
    if value is None:
        return "table"
    if value not in FORMATS:
        raise CliError(f"Invalid output format '{value}': use table or json.")
    return value


def emit(args: dict, kind: str, document: dict, render: Callable[[dict], str]) -> None:
    """Print ``document`` as the command's format asks: JSON, or the text
    ``render(document)`` makes of it (nothing when that is empty)."""
    if kind not in KINDS:
        raise ValueError(f"undocumented output kind {kind!r}")
    if format_of(args) == "json":
        print(json.dumps({"kind": kind, "version": SHAPE_VERSION, **document}, indent=2))
        return
    text = render(document)
    if text:
        print(text)


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table in the style the original calicoctl printed."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
    return "\n".join([rule, line(headers), rule] + [line(r) for r in cells] + [rule])
