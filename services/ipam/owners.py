"""Who owns an allocation, as far as etcd tells: what IPAM's garbage collector,
its consistency check and its release guard consult.

The owner of an allocation is found from its handle and attributes, by the
first rule that applies:

- attribute ``endpoint`` with a handle ``<node>/<orchestrator>/<workload>``
  (every claim the endpoint service makes, for calicoctl, the CNI ``calico``
  plugin, the CALICO_IP proxy and schedulers): the record of that endpoint.
  The record is written before the claim and deleted after the release, so
  a live add always has it (pending records count);
- a handle ``<node>/docker-ipam/<id>`` (the Docker IPAM driver): an endpoint
  record of that node that lists the address, or names the handle in its
  label ``docker-ipam-handles`` (the Docker network driver sets it);
- any other handle ``<node>/...`` with attribute ``node`` (e.g. the
  calico-ipam CNI plugin's, for another plugin's interface): the node
  itself. IPAM cannot tell which container holds it: while the node is
  registered it is "unattributed", reported but never released;
- anything else (IPAM used on its own, handles of the caller's choosing):
  not IPAM's to judge, never touched.

Whatever the rule, an allocation of a node that is not registered (retired,
or removed with ``calicoctl node remove``) has lost its owner.

An owner found gone carries the key whose absence proves it (the endpoint or
node record), so that a release can be made conditional on it, in the same
transaction; the Docker rule has no single key, and is re-checked just
before the release instead. A malformed endpoint record never makes an
address look unowned: its key counts as present, and a node with one keeps
its Docker addresses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict

from calicopy.datastore import keys
from calicopy.datastore.store import Store
from calicopy.model.endpoint import ACTIVE, DOCKER_IPAM_HANDLES_LABEL, Endpoint
from calicopy.model.ipam import Allocation

DOCKER_IPAM = "docker-ipam"


@dataclasses.dataclass(frozen=True)
class EndpointUse:
    """An active endpoint, with the addresses of it a question concerns."""

    endpoint_id: str
    node: str
    orchestrator: str
    workload_id: str
    ips: tuple[str, ...] = ()

    @classmethod
    def of(cls, ep: Endpoint, ips=()) -> "EndpointUse":
        return cls(ep.endpoint_id, ep.node, ep.orchestrator, ep.workload_id, tuple(ips))

    def describe(self) -> str:
        return (f"endpoint {self.endpoint_id} ({self.orchestrator} workload "
                f"{self.workload_id} on node {self.node})")

    def remedy(self) -> str:
        """How a person removes the workload, to add it again."""
        if self.orchestrator == "netns":
            how = f" ('calicoctl container remove {self.workload_id}' on node {self.node})"
        elif self.orchestrator == "docker":
            how = f" ('docker rm -f' of its container, on node {self.node})"
        else:
            how = f" (through {self.orchestrator}, on node {self.node})"
        return "remove the workload and add it again" + how


@dataclasses.dataclass(frozen=True)
class Owner:
    """The owner an allocation is attributed to, and whether it still exists."""

    rule: str                   # "endpoint", "docker", "node" or "unattributed"
    node: str
    present: bool
    describe: str               # e.g. "endpoint <id> of node <node>"
    proof: str | None = None    # a key whose absence proves the owner gone

    @property
    def gone(self) -> bool:
        """Gone, and known to be: the garbage collector may release it."""
        return not self.present and self.rule != "unattributed"


class View:
    """Nodes and endpoint records as read at one moment."""

    def __init__(self, node_names: set[str], records: list[tuple[str, Endpoint | None]]):
        self.nodes = set(node_names)
        self.endpoint_keys = {key for key, _ in records}
        self.endpoints = [ep for _, ep in records if ep is not None]
        # Nodes with a record that could not be read: their Docker addresses stay.
        self.unreadable = {keys.parse_host(key) for key, ep in records if ep is None}
        self._by_node: dict[str, list[Endpoint]] = defaultdict(list)
        self._by_ip: dict[str, list[Endpoint]] = defaultdict(list)
        for ep in self.endpoints:
            self._by_node[ep.node].append(ep)
            if ep.state == ACTIVE:
                for ip in ep.ips:
                    self._by_ip[_norm(ip)].append(ep)

    @classmethod
    def read(cls, store: Store, node: str | None = None) -> "View":
        """Every node and endpoint record (or those of one node)."""
        prefix = keys.host(node) if node else keys.HOSTS
        nodes, records = set(), []
        for kv in store.list(prefix):
            if keys.is_node(kv.key):
                nodes.add(keys.parse_host(kv.key))
            elif keys.is_endpoint(kv.key):
                records.append((kv.key, _endpoint(kv)))
        return cls(nodes, records)

    def users(self, ip: str) -> list[Endpoint]:
        """The active endpoints that list ``ip``."""
        return list(self._by_ip.get(_norm(ip), ()))

    def active(self) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.state == ACTIVE]

    def owner(self, ip: str, alloc: Allocation) -> Owner | None:
        """The owner of the allocation of ``ip``; None when the rules do not
        apply (not an allocation of a node's)."""
        node, sep, rest = alloc.handle_id.partition("/")
        orchestrator, _, workload = rest.partition("/")
        ep_id = alloc.attributes.get("endpoint")
        if ep_id and sep and orchestrator and workload:
            key = keys.endpoint(node, orchestrator, workload, ep_id)
            return Owner("endpoint", node, key in self.endpoint_keys,
                         f"endpoint {ep_id} of node {node}", key)
        if not sep or alloc.attributes.get("node", node) != node or \
                (orchestrator != DOCKER_IPAM and "node" not in alloc.attributes):
            return None
        if node not in self.nodes:
            return Owner("node", node, False, f"node {node}, which is not registered",
                         keys.node(node))
        if orchestrator == DOCKER_IPAM:
            present = node in self.unreadable or any(
                _norm(ip) in map(_norm, ep.ips) or alloc.handle_id in _docker_handles(ep)
                for ep in self._by_node.get(node, ()))
            return Owner("docker", node, present,
                         f"a Docker endpoint of node {node} listing it")
        return Owner("unattributed", node, True, f"node {node}")


def _endpoint(kv) -> Endpoint | None:
    try:
        return Endpoint.from_json(kv.json())
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def _docker_handles(ep: Endpoint) -> set[str]:
    return set(filter(None, ep.labels.get(DOCKER_IPAM_HANDLES_LABEL, "").split(",")))


def parses_into(ip: str, net) -> bool:
    """``ip`` is an address (a malformed record's may not be) within ``net``."""
    try:
        return ipaddress.ip_address(ip) in net
    except ValueError:
        return False


def _norm(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip
