"""The policy service's messages <-> calicopy.model.policy, and its client."""

from __future__ import annotations

import json

from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy.model.policy import Profile
from calicopy.rpc import Client


def profile_to_msg(profile: Profile, members=()) -> policy_pb2.Profile:
    return policy_pb2.Profile(name=profile.name, tags=profile.tags,
                              rules_json=json.dumps(profile.rules_json(), indent=2),
                              member_endpoint_ids=list(members))


class ProfileClient:
    """The policy service's profiles, as far as a node needs them."""

    def __init__(self, target: str, timeout: float):
        self._client = Client("policy service", target, policy_pb2_grpc.PolicyServiceStub,
                              timeout)

    def create(self, name: str) -> None:
        self._client.call("CreateProfile", policy_pb2.CreateProfileRequest(name=name))

    def close(self) -> None:
        self._client.close()
