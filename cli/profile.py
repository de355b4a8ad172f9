"""Profiles: groups of workloads with tags and allow/deny rules.

Usage:
  calicoctl profile show [--detailed] [-o <FORMAT>]
  calicoctl profile (add|remove) <PROFILE> [--force]
  calicoctl profile <PROFILE> tag show [-o <FORMAT>]
  calicoctl profile <PROFILE> tag (add|remove) <TAG>
  calicoctl profile <PROFILE> rule show [--stats] [-o <FORMAT>]
  calicoctl profile <PROFILE> rule json
  calicoctl profile <PROFILE> rule update
  calicoctl profile <PROFILE> member add <CONTAINER>

Options:
  --detailed   Also list each profile's member endpoints.
  --force      Remove the profile even though endpoints carry it (it is
               taken off them).
  --stats      Also each rule's packets and bytes, summed over the nodes (the
               kernel's counters, asked of every node's policy agent through
               etcd, as the operator): counted since the rule was last
               changed or the node's agent started.
  -o <FORMAT>  Output format: table (the default) or json (its shape is in
               docs/cli-json.md). `rule json` prints the rules in the format
               `rule update` reads instead.

A new profile is tagged with its own name; its members accept traffic from
members (inbound: allow from tag <PROFILE>, then deny) and may send anything.
`rule update` reads the rules as JSON on standard input, in the format that
`rule json` prints; it is checked completely before anything changes.
A workload with several profiles accepts what any of them allows; a workload
with none is isolated. <CONTAINER> is as for `calicoctl container` (a network
namespace, a process, or a Docker container's name or id; for a container on
Calico Docker networks, its endpoints on them join the profile too).
"""

from __future__ import annotations

import json
import sys

import grpc

from calico.policy.v1 import policy_pb2
from cli import client, nodequery, output, workloads
from cli.errors import CliError
from cli.output import table
from calicopy.model.policy import NAME_RE, TAG_RE, parse_rules

NAME_MESSAGE = ("Profile names must be <30 character long and can only contain numbers, "
                "letters and underscores.")


def run(args: dict) -> None:
    name = args["<PROFILE>"]
    if name is not None and not NAME_RE.match(name):
        raise CliError(NAME_MESSAGE)
    if args["tag"] and args["<TAG>"] is not None and not TAG_RE.match(args["<TAG>"]):
        raise CliError("Tag names can only contain letters, numbers and underscores.")
    policy = client.policy()
    if args["show"] and not args["tag"] and not args["rule"]:
        show(policy, args)
    elif args["tag"]:
        tags(policy, name, args)
    elif args["rule"]:
        rules(policy, name, args)
    elif args["member"]:
        member_add(policy, name, args["<CONTAINER>"])
    elif args["add"]:
        try:
            policy.call("CreateProfile", policy_pb2.CreateProfileRequest(name=name))
            print(f"Created profile {name}")
        except client.RpcFailure as exc:
            if exc.code != grpc.StatusCode.ALREADY_EXISTS:
                raise CliError(str(exc)) from None
            print(f"Profile {name} already exists.")
    else:
        try:
            policy.call("DeleteProfile", policy_pb2.DeleteProfileRequest(
                name=name, force=args["--force"]))
        except client.RpcFailure as exc:
            hint = " Use --force." if exc.code == grpc.StatusCode.FAILED_PRECONDITION else ""
            raise CliError(f"{exc}{hint}") from None
        print(f"Deleted profile {name}")


def show(policy, args: dict) -> None:
    detailed = args["--detailed"]
    profiles = client.call(policy, "ListProfiles", policy_pb2.ListProfilesRequest(
        with_members=detailed)).profiles
    doc = {"profiles": [{"name": p.name, **({"tags": list(p.tags), "member_endpoint_ids":
                                             list(p.member_endpoint_ids)} if detailed else {})}
                        for p in profiles]}

    def render(doc):
        if not detailed:
            return table(["Name"], [[p["name"]] for p in doc["profiles"]])
        return table(["Name", "Tags", "Member endpoints"],
                     [[p["name"], ",".join(p["tags"]), ", ".join(p["member_endpoint_ids"]) or "-"]
                      for p in doc["profiles"]])
    output.emit(args, "ProfileList", doc, render)


def tags(policy, name: str, args: dict) -> None:
    if args["show"]:
        shown = client.call(policy, "GetProfile", policy_pb2.GetProfileRequest(
            name=name)).profile.tags
        output.emit(args, "ProfileTags", {"profile": name, "tags": list(shown)},
                    lambda doc: "\n".join(doc["tags"]))
        return
    tag = args["<TAG>"]
    if args["add"]:
        client.call(policy, "UpdateTags", policy_pb2.UpdateTagsRequest(name=name, add=tag))
        print(f"Tag {tag} added to profile {name}")
    else:
        client.call(policy, "UpdateTags", policy_pb2.UpdateTagsRequest(name=name, remove=tag))
        print(f"Tag {tag} removed from profile {name}")


def rules(policy, name: str, args: dict) -> None:
    if args["update"]:
        text = sys.stdin.read()
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise CliError(f"The rules on standard input are not valid JSON: {exc}.") from None
        if isinstance(document, dict) and document.get("id", name) != name:
            raise CliError(f"Rules id '{document['id']}' does not match profile name "
                           f"'{name}'.")
        client.call(policy, "UpdateRules", policy_pb2.UpdateRulesRequest(
            name=name, rules_json=json.dumps(document)))
        print(f"Successfully updated rules on profile {name}")
        return
    profile = client.call(policy, "GetProfile", policy_pb2.GetProfileRequest(name=name)).profile
    if args["json"]:
        print(profile.rules_json)
        return
    inbound, outbound = parse_rules(json.loads(profile.rules_json), name)
    doc = {"profile": name,
           "inbound_rules": [_rule(i, r) for i, r in enumerate(inbound, 1)],
           "outbound_rules": [_rule(i, r) for i, r in enumerate(outbound, 1)]}
    if args["--stats"]:
        _add_stats(name, doc)

    def render(doc):
        lines = []
        for title, key in (("Inbound rules:", "inbound_rules"),
                           ("Outbound rules:", "outbound_rules")):
            lines.append(title)
            lines += [f"  {r['number']:>2} {_counts(r)}{r['description']}" for r in doc[key]]
        if doc.get("unanswered"):
            lines.append(f"Not counted: node(s) {', '.join(doc['unanswered'])} did not answer.")
        return "\n".join(lines)
    output.emit(args, "ProfileRules", doc, render)


def _counts(rule: dict) -> str:
    if "packets" not in rule:
        return ""
    return f"{rule['packets']:>10} pkts {rule['bytes']:>12} bytes  "


def _add_stats(name: str, doc: dict) -> None:
    """Each rule's packets and bytes, summed over the nodes that answered."""
    with nodequery.etcd() as store:
        asked = nodequery.nodes(nodequery.cluster(store), None)
        with nodequery.Question(store, asked, kind="counters", profile=name) as question:
            answers = question.wait()
    for direction in ("inbound", "outbound"):
        for rule in doc[f"{direction}_rules"]:
            rule["packets"] = rule["bytes"] = 0
            for answer in answers.values():
                counts = answer.get("counters", {}).get(direction, {}).get(str(rule["number"]))
                if counts:
                    rule["packets"] += counts["packets"]
                    rule["bytes"] += counts["bytes"]
    doc["nodes"] = sorted(answers)
    doc["unanswered"] = [n for n in asked if n not in answers]


def _rule(number: int, rule) -> dict:
    """A rule as `rule show -o json` gives it: its number in its list, its
    fields as in the rules format (`rule json`), and the line `rule show`
    prints."""
    return {"number": number, **rule.to_json(), "description": rule.describe()}


def member_add(policy, name: str, container: str) -> None:
    workload = workloads.find(container)
    client.call(policy, "GetProfile", policy_pb2.GetProfileRequest(name=name))  # exists?
    own, driver = workloads.endpoints(workload, client.endpoint())
    eps = own + driver
    if not eps:
        raise CliError(f"{container} has not been configured with Calico Networking; use "
                       "'calicoctl container add' first.")
    for ep in eps:
        current = client.call(policy, "GetEndpointProfiles", policy_pb2.GetEndpointProfilesRequest(
            endpoint_id=ep.endpoint_id)).profile_ids
        if name not in current:
            client.call(policy, "SetEndpointProfiles", policy_pb2.SetEndpointProfilesRequest(
                endpoint_id=ep.endpoint_id, profile_ids=list(current) + [name]))
    print(f"Added {container} to {name}")
