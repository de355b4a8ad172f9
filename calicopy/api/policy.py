"""The policy service's messages <-> calicopy.model.policy, and its client."""

from __future__ import annotations

import json

from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy.model.policy import Profile
from calicopy.rpc import Client


_ACTIONS = {"drop": policy_pb2.ENDPOINT_TO_HOST_ACTION_DROP,
            "return": policy_pb2.ENDPOINT_TO_HOST_ACTION_RETURN,
            "accept": policy_pb2.ENDPOINT_TO_HOST_ACTION_ACCEPT}


def action_to_msg(action: str) -> int:
    """drop/return/accept -> EndpointToHostAction."""
    return _ACTIONS[action]


def action_from_msg(value: int) -> str | None:
    """EndpointToHostAction -> drop/return/accept; None for UNSPECIFIED; the
    number as text for a value this version does not know (refused later)."""
    if value == policy_pb2.ENDPOINT_TO_HOST_ACTION_UNSPECIFIED:
        return None
    return next((name for name, v in _ACTIONS.items() if v == value), str(value))


def profile_to_msg(profile: Profile, members=()) -> policy_pb2.Profile:
    return policy_pb2.Profile(name=profile.name, tags=profile.tags,
                              rules_json=json.dumps(profile.rules_json(), indent=2),
                              member_endpoint_ids=list(members))


class ProfileClient:
    """The policy service's profiles, as far as a node needs them."""

    def __init__(self, target: str, timeout: float, wait_for_ready: bool = False):
        self._client = Client("policy service", target, policy_pb2_grpc.PolicyServiceStub,
                              timeout, wait_for_ready=wait_for_ready)

    def create(self, name: str) -> None:
        self._client.call("CreateProfile", policy_pb2.CreateProfileRequest(name=name))

    def close(self) -> None:
        self._client.close()
