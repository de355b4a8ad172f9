"""Profiles (tags and rules), endpoints' profile lists and the cluster-wide
policy settings, as stored in etcd.

A profile is two keys, ``tags`` and ``rules``, written together. Endpoint
records belong to their node's endpoint service; here only their
``profile_ids`` are changed, with a compare-and-swap on the record. A setting
is one key under /calico/v1/config/, absent while it has its default.
"""

from __future__ import annotations

import json
import logging

from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store, Txn, retry
from calicopy.model.endpoint import Endpoint
from calicopy.model.record import BadRecord, decode
from calicopy.quarantine import Quarantine
from services.policy.errors import (BadRule, EndpointNotFound, ProfileExists, ProfileInUse,
                                    ProfileNotFound)
from calicopy.model.policy import (DEFAULT_ENDPOINT_TO_HOST_ACTION, Profile,
                                   check_endpoint_to_host_action, check_profile_name,
                                   check_tag, parse_rules, tags_from_json)

log = logging.getLogger("calico-policy")


class PolicyRegistry:
    def __init__(self, store: Store):
        self.store = store
        # Malformed records are skipped as if absent, and logged once.
        self.quarantine = Quarantine(log)

    # Profiles ----------------------------------------------------------------

    def _read(self, name: str) -> tuple[Profile, KV, KV]:
        check_profile_name(name)
        tags_kv = self.store.get(keys.profile_tags(name))
        rules_kv = self.store.get(keys.profile_rules(name))
        if tags_kv is None or rules_kv is None:
            raise ProfileNotFound(name)
        tags = decode(tags_kv, tags_from_json)
        inbound, outbound = decode(rules_kv, lambda data: parse_rules(data, name))
        return Profile(name, tags, inbound, outbound), tags_kv, rules_kv

    def get(self, name: str) -> Profile:
        return self._read(name)[0]

    def create(self, name: str) -> Profile:
        check_profile_name(name)
        profile = Profile.default(name)
        txn = Txn().create(keys.profile_tags(name), profile.tags)
        txn.create(keys.profile_rules(name), profile.rules_json())
        if not self.store.commit(txn):
            raise ProfileExists(name)
        return profile

    def delete(self, name: str, force: bool = False) -> list[str]:
        """Delete a profile; with ``force`` it is also taken off its endpoints.
        Returns the ids of the endpoints that used it."""
        _, tags_kv, rules_kv = self._read(name)
        users = [ep for ep, _ in self.endpoints() if name in ep.profile_ids]
        if users and not force:
            raise ProfileInUse(f"Profile {name} is used by {len(users)} endpoint(s); remove it "
                               "from them first, or force the removal.")
        for ep in users:
            self.set_endpoint_profiles(ep.endpoint_id, without=name)
        if not self.store.commit(Txn().delete(tags_kv).delete(rules_kv)):
            raise ProfileInUse(f"Profile {name} changed while being deleted; try again.")
        return [ep.endpoint_id for ep in users]

    def list(self) -> list[Profile]:
        names = sorted({keys.parse_profile(kv.key)[0] for kv in self.store.list(keys.PROFILES)})
        found, bad = [], {}
        for name in names:
            try:
                found.append(self.get(name))
            except ProfileNotFound:     # half of a profile being created or deleted
                continue
            except BadRecord as exc:
                bad[exc.key] = exc.why
        self.quarantine.update(keys.PROFILES, bad)
        return found

    def set_tags(self, name: str, add: str | None = None, remove: str | None = None) -> Profile:
        def attempt():
            profile, tags_kv, _ = self._read(name)
            if add is not None:
                check_tag(add)
                if add not in profile.tags:
                    profile.tags.append(add)
            if remove is not None:
                if remove not in profile.tags:
                    raise BadRule(f"Tag {remove} is not on profile {name}")
                profile.tags.remove(remove)
            return profile if self.store.commit(Txn().update(tags_kv, profile.tags)) else None
        return retry(f"changing the tags of {name}", attempt)

    def set_rules(self, name: str, document) -> Profile:
        """Replace a profile's rules with a validated document (its ``id``, if
        present, must be the profile's name)."""
        inbound, outbound = parse_rules(document, name)

        def attempt():
            profile, _, rules_kv = self._read(name)
            profile.inbound, profile.outbound = inbound, outbound
            ok = self.store.commit(Txn().update(rules_kv, profile.rules_json()))
            return profile if ok else None
        return retry(f"updating the rules of {name}", attempt)

    # Endpoints -------------------------------------------------------------------

    def endpoints(self) -> list[tuple[Endpoint, KV]]:
        """Every endpoint of every node (a malformed record left out)."""
        found, bad = [], {}
        for kv in self.store.list(keys.HOSTS):
            if keys.is_endpoint(kv.key):
                try:
                    found.append((decode(kv, Endpoint.from_json), kv))
                except BadRecord as exc:
                    bad[exc.key] = exc.why
        self.quarantine.update(keys.HOSTS, bad)
        return found

    def endpoint(self, endpoint_id: str) -> tuple[Endpoint, KV]:
        for ep, kv in self.endpoints():
            if ep.endpoint_id == endpoint_id:
                return ep, kv
        raise EndpointNotFound(f"Endpoint {endpoint_id} not found.")

    def set_endpoint_profiles(self, endpoint_id: str, profile_ids: list[str] | None = None,
                              without: str | None = None) -> Endpoint:
        """Replace an endpoint's profiles (each must exist), or take one off
        (``without``), deciding on the record as read in each attempt."""
        for name in profile_ids or ():
            self.get(name)
        if profile_ids is not None and len(set(profile_ids)) != len(profile_ids):
            raise BadRule("A profile appears twice in the list.")

        def attempt():
            ep, kv = self.endpoint(endpoint_id)
            ep.profile_ids = (list(profile_ids) if profile_ids is not None
                              else [p for p in ep.profile_ids if p != without])
            return ep if self.store.commit(Txn().update(kv, ep.to_json())) else None
        return retry(f"setting the profiles of endpoint {endpoint_id}", attempt)

    # Settings --------------------------------------------------------------------

    def endpoint_to_host_action(self) -> str:
        """drop, return or accept (a malformed record reads as the default,
        as the agents read it)."""
        kv = self.store.get(keys.ENDPOINT_TO_HOST_ACTION)
        try:
            return check_endpoint_to_host_action(kv.json()) if kv else \
                DEFAULT_ENDPOINT_TO_HOST_ACTION
        except (BadRule, ValueError):
            return DEFAULT_ENDPOINT_TO_HOST_ACTION

    def set_endpoint_to_host_action(self, action: str) -> str:
        check_endpoint_to_host_action(action)

        def attempt():
            kv = self.store.get(keys.ENDPOINT_TO_HOST_ACTION)
            # A JSON string (Txn takes a str as already encoded).
            txn = Txn().put(keys.ENDPOINT_TO_HOST_ACTION, kv, json.dumps(action))
            return self.store.commit(txn) or None
        retry("setting the endpoint-to-host action", attempt)
        return action
