"""The profiles of one endpoint (on any node), by endpoint id.

Usage:
  calicoctl endpoint <ENDPOINT_ID> profile show [-o <FORMAT>]
  calicoctl endpoint <ENDPOINT_ID> profile (set|append|remove) [<PROFILES>...]

Options:
  -o <FORMAT>   Output format: table (the default), one profile a line, or
                json (its shape is in docs/cli-json.md).

`set` replaces the list (none isolates the endpoint), `append` adds to its
end, `remove` takes profiles off. Order matters only for which rule `policy
explain` reports; connectivity is the union of the profiles. Endpoint ids are
shown by `calicoctl shownodes --detailed` and `calicoctl container show`.
"""

from __future__ import annotations

from calico.policy.v1 import policy_pb2
from cli import client, output
from cli.errors import CliError


def run(args: dict) -> None:
    policy = client.policy()
    ep_id = args["<ENDPOINT_ID>"]
    current = list(client.call(policy, "GetEndpointProfiles", policy_pb2.GetEndpointProfilesRequest(
        endpoint_id=ep_id)).profile_ids)
    if args["show"]:
        output.emit(args, "EndpointProfiles", {"endpoint_id": ep_id, "profile_ids": current},
                    lambda doc: "\n".join(doc["profile_ids"]))
        return
    given = args["<PROFILES>"]
    if args["set"]:
        new = given
    elif args["append"]:
        already = [p for p in given if p in current]
        if already:
            raise CliError(f"Endpoint {ep_id} already has profile(s) {', '.join(already)}.")
        new = current + given
    else:
        missing = [p for p in given if p not in current]
        if missing:
            raise CliError(f"Endpoint {ep_id} does not have profile(s) {', '.join(missing)}.")
        new = [p for p in current if p not in given]
    result = client.call(policy, "SetEndpointProfiles", policy_pb2.SetEndpointProfilesRequest(
        endpoint_id=ep_id, profile_ids=new)).profile_ids
    print(f"Profiles of endpoint {ep_id}: {', '.join(result) or '(none: isolated)'}")
