"""The cluster-wide policy settings through the policy service's servicer, over
an in-memory store: what it stores, what it answers, what it refuses."""

import grpc
import pytest

from calico.policy.v1 import policy_pb2
from calicopy.datastore import keys
from calicopy.datastore.store import KV
from services.policy.registry import PolicyRegistry
from services.policy.servicer import PolicyServicer
from tests.fakes import MemoryStore

P = policy_pb2


class Aborted(Exception):
    pass


class Context:
    """What maps_errors needs of a grpc.ServicerContext."""

    def abort(self, code, details):
        raise Aborted(code, details)


@pytest.fixture
def service():
    store = MemoryStore()
    return store, PolicyServicer(PolicyRegistry(store))


def action(servicer) -> int:
    return servicer.GetPolicySettings(P.GetPolicySettingsRequest(), Context()) \
        .settings.endpoint_to_host_action


def test_drop_until_set_and_every_value_round_trips(service):
    store, servicer = service
    assert action(servicer) == P.ENDPOINT_TO_HOST_ACTION_DROP
    assert store.get(keys.ENDPOINT_TO_HOST_ACTION) is None
    for value, stored in ((P.ENDPOINT_TO_HOST_ACTION_RETURN, "return"),
                          (P.ENDPOINT_TO_HOST_ACTION_ACCEPT, "accept"),
                          (P.ENDPOINT_TO_HOST_ACTION_DROP, "drop")):
        resp = servicer.SetPolicySettings(P.SetPolicySettingsRequest(
            endpoint_to_host_action=value), Context())
        assert resp.settings.endpoint_to_host_action == value == action(servicer)
        assert store.json(keys.ENDPOINT_TO_HOST_ACTION) == stored


def test_unspecified_changes_nothing_and_unknown_values_are_refused(service):
    store, servicer = service
    servicer.SetPolicySettings(P.SetPolicySettingsRequest(
        endpoint_to_host_action=P.ENDPOINT_TO_HOST_ACTION_ACCEPT), Context())
    revision = store.revision
    resp = servicer.SetPolicySettings(P.SetPolicySettingsRequest(), Context())
    assert resp.settings.endpoint_to_host_action == P.ENDPOINT_TO_HOST_ACTION_ACCEPT
    with pytest.raises(Aborted) as info:
        servicer.SetPolicySettings(P.SetPolicySettingsRequest(endpoint_to_host_action=7),
                                   Context())
    assert info.value.args == (grpc.StatusCode.INVALID_ARGUMENT, "Invalid endpoint-to-host "
                               "action '7': use drop, return or accept.")
    assert store.revision == revision and action(servicer) == P.ENDPOINT_TO_HOST_ACTION_ACCEPT


def test_a_malformed_record_reads_as_the_default(service):
    store, servicer = service
    for malformed in ('"allow"', "accept", '{"action": "accept"}'):
        store.data[keys.ENDPOINT_TO_HOST_ACTION] = KV(keys.ENDPOINT_TO_HOST_ACTION, malformed, 1)
        assert action(servicer) == P.ENDPOINT_TO_HOST_ACTION_DROP
