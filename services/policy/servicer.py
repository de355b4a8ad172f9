"""PolicyService: translates between the proto contract and the policy domain."""

from __future__ import annotations

import ipaddress
import json

from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy.api.policy import action_from_msg, action_to_msg, profile_to_msg
from calicopy.datastore import keys
from calicopy.rpc import maps_errors
from services.policy.errors import BadRule
from services.policy.explain import Packet, explain
from services.policy.registry import PolicyRegistry
from calicopy.model.policy import Snapshot


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):

    def __init__(self, registry: PolicyRegistry):
        self.registry = registry

    @maps_errors
    def CreateProfile(self, request, context):
        return policy_pb2.CreateProfileResponse(
            profile=profile_to_msg(self.registry.create(request.name)))

    @maps_errors
    def DeleteProfile(self, request, context):
        return policy_pb2.DeleteProfileResponse(
            endpoint_ids=self.registry.delete(request.name, request.force))

    @maps_errors
    def GetProfile(self, request, context):
        return policy_pb2.GetProfileResponse(
            profile=profile_to_msg(self.registry.get(request.name)))

    @maps_errors
    def ListProfiles(self, request, context):
        endpoints = [ep for ep, _ in self.registry.endpoints()] if request.with_members else []
        return policy_pb2.ListProfilesResponse(profiles=[
            profile_to_msg(p, [ep.endpoint_id for ep in endpoints if p.name in ep.profile_ids])
            for p in self.registry.list()])

    @maps_errors
    def UpdateTags(self, request, context):
        profile = self.registry.set_tags(request.name, request.add or None,
                                         request.remove or None)
        return policy_pb2.UpdateTagsResponse(profile=profile_to_msg(profile))

    @maps_errors
    def UpdateRules(self, request, context):
        try:
            document = json.loads(request.rules_json)
        except ValueError as exc:
            raise BadRule(f"The rules are not valid JSON: {exc}.") from None
        profile = self.registry.set_rules(request.name, document)
        return policy_pb2.UpdateRulesResponse(profile=profile_to_msg(profile))

    @maps_errors
    def GetEndpointProfiles(self, request, context):
        ep, _ = self.registry.endpoint(request.endpoint_id)
        return policy_pb2.GetEndpointProfilesResponse(profile_ids=ep.profile_ids)

    @maps_errors
    def SetEndpointProfiles(self, request, context):
        ep = self.registry.set_endpoint_profiles(request.endpoint_id, list(request.profile_ids))
        return policy_pb2.SetEndpointProfilesResponse(profile_ids=ep.profile_ids)

    @maps_errors
    def Explain(self, request, context):
        try:
            src, dst = ipaddress.ip_address(request.src), ipaddress.ip_address(request.dst)
        except ValueError as exc:
            raise BadRule(f"Invalid address: {exc}.") from None
        if src.version != dst.version:
            raise BadRule(f"{src} and {dst} are of different IP versions.")
        protocol = request.protocol or ("icmp" if src.version == 4 else "icmpv6")
        if protocol not in ("tcp", "udp", "icmp", "icmpv6"):
            raise BadRule(f"Unknown protocol '{protocol}': use tcp, udp, icmp or icmpv6.")
        if request.port and protocol not in ("tcp", "udp"):
            raise BadRule("A port only makes sense with tcp or udp.")
        if not 0 <= request.port <= 65535:
            raise BadRule(f"Invalid port {request.port}.")
        echo = {"icmp": 8, "icmpv6": 128}.get(protocol)
        packet = Packet(str(src), str(dst), protocol, request.port or None, icmp_type=echo,
                        icmp_code=0 if echo is not None else None)
        revision, kvs = self.registry.store.snapshot(keys.PREFIX)
        snapshot = Snapshot.from_kvs(revision, kvs)
        self.registry.quarantine.update(keys.PREFIX, snapshot.bad)
        allowed, decisions, notes = explain(snapshot, packet)
        return policy_pb2.ExplainResponse(allowed=allowed, notes=notes, steps=[
            policy_pb2.Step(direction=d.direction, workload_id=d.endpoint.workload_id,
                            endpoint_id=d.endpoint.endpoint_id, allowed=d.allowed,
                            profile=d.profile or "", rule_index=d.rule_index or 0,
                            rule=d.rule.describe() if d.rule else "", text=d.describe())
            for d in decisions])

    def _settings(self) -> policy_pb2.PolicySettings:
        return policy_pb2.PolicySettings(
            endpoint_to_host_action=action_to_msg(self.registry.endpoint_to_host_action()))

    @maps_errors
    def GetPolicySettings(self, request, context):
        return policy_pb2.GetPolicySettingsResponse(settings=self._settings())

    @maps_errors
    def SetPolicySettings(self, request, context):
        action = action_from_msg(request.endpoint_to_host_action)
        if action is not None:
            self.registry.set_endpoint_to_host_action(action)
        return policy_pb2.SetPolicySettingsResponse(settings=self._settings())
