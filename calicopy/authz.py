"""Who may call what, on which resource: the one table every server applies.

The caller's identity is its client certificate's common name (calicopy.pki):
``admin``, ``node:<name>``, ``scheduler:<name>``. A call over a unix socket,
which only root can open (the sockets are 0600), and a call to a port served
with ``--insecure`` (throw-away labs only) act as ``admin``.

- ``admin`` may call everything.
- ``node:<name>`` reads what a node needs; allocates and releases addresses
  only for host <name> and under its own handles (``<name>/...``); registers
  and reads its own node record and BGP status; calls the endpoint service of
  its own host only. It may create a profile with the default rules (the
  Docker plugin, the CALICO_IP proxy and the CNI plugin name a network's
  profile on the node; CreateProfile never changes an existing profile). It
  never changes pools, profiles' rules or tags, endpoints' profiles through the
  policy service, BGP peers or global settings, nor retires a host (IPAM's
  ReleaseHost), itself included.
- ``scheduler:<name>`` runs workloads: the endpoint service, IPAM for
  workloads (any host, any handle), reading policy and creating a workload's
  profile; never pools, rules, tags, peers, nodes, retiring hosts or global
  settings.
- anything else: refused.

Health checks and reflection are open to every authenticated caller. A
method not in the table is the administrator's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable

log = logging.getLogger("calico-authz")

ADMIN = "admin"
INSECURE_IDENTITY = ADMIN
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")


@dataclasses.dataclass(frozen=True)
class Caller:
    identity: str

    @property
    def kind(self) -> str:
        return ADMIN if self.identity == ADMIN else self.identity.partition(":")[0]

    @property
    def name(self) -> str:
        return self.identity.partition(":")[2]


# A rule says why a call is refused, or None when it is allowed.
Rule = Callable[[Caller, object, "Authorizer"], "str | None"]


def allow(caller, request, authz) -> None:
    return None


def refuse(why: str) -> Rule:
    return lambda caller, request, authz: why


def _own_handle(caller: Caller, handle: str) -> str | None:
    if not handle.startswith(f"{caller.name}/"):
        return f"a node may use only its own handles ({caller.name}/...)"
    return None


def own_allocation(caller, request, authz):
    if request.hostname != caller.name:
        return f"a node may allocate only for itself ({caller.name})"
    return _own_handle(caller, request.handle_id)


def own_handle(caller, request, authz):
    return _own_handle(caller, request.handle_id)


def own_node_record(caller, request, authz):
    name = request.node.name if hasattr(request, "node") else request.name
    return None if name == caller.name else "a node may register only itself"


def local_node(caller, request, authz):
    if authz.node and caller.name != authz.node:
        return f"a node may call only its own endpoint service (this is {authz.node}'s)"
    return None


def resource(request) -> str:
    """The fields of a request that say what it is about, for messages and logs."""
    parts = []
    for field in ("cidr", "name", "hostname", "handle_id", "ip", "endpoint_id",
                  "orchestrator", "workload_id"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            parts.append(f"{field} {value}")
    for field in ("pool", "peer", "node"):
        msg = getattr(request, field, None)
        if msg is not None and hasattr(msg, "ListFields") and msg.ListFields():
            key = next((getattr(msg, k) for k in ("cidr", "ip", "name") if getattr(msg, k, "")),
                       "")
            if key:
                parts.append(f"{field} {key}")
    return ", ".join(parts)


_READ = {"node": allow, "scheduler": allow}
_POOLS = refuse("pools are the administrator's")
_RULES = refuse("profiles' rules, tags and membership are the administrator's")
_BGP = refuse("BGP peers and settings are the administrator's")
_NODES = refuse("nodes are the administrator's")
_RETIRE = refuse("retiring a host is the administrator's")

TABLE: dict[str, dict[str, Rule]] = {
    # IPAM
    "/calico.ipam.v1.IpamService/CreatePool": {"node": _POOLS, "scheduler": _POOLS},
    "/calico.ipam.v1.IpamService/UpdatePool": {"node": _POOLS, "scheduler": _POOLS},
    "/calico.ipam.v1.IpamService/DeletePool": {"node": _POOLS, "scheduler": _POOLS},
    "/calico.ipam.v1.IpamService/ListPools": _READ,
    "/calico.ipam.v1.IpamService/GetAllocation": _READ,
    "/calico.ipam.v1.IpamService/GetUsage": _READ,
    "/calico.ipam.v1.IpamService/CheckConsistency": _READ,
    "/calico.ipam.v1.IpamService/AutoAssign": {"node": own_allocation, "scheduler": allow},
    "/calico.ipam.v1.IpamService/AssignIP": {"node": own_allocation, "scheduler": allow},
    "/calico.ipam.v1.IpamService/ReleaseIPs": {"node": own_handle, "scheduler": allow},
    "/calico.ipam.v1.IpamService/ReleaseByHandle": {"node": own_handle, "scheduler": allow},
    "/calico.ipam.v1.IpamService/ListHandleAllocations": {"node": own_handle,
                                                          "scheduler": allow},
    "/calico.ipam.v1.IpamService/ReleaseHost": {"node": _RETIRE, "scheduler": _RETIRE},
    # Policy
    "/calico.policy.v1.PolicyService/CreateProfile": _READ,
    "/calico.policy.v1.PolicyService/GetProfile": _READ,
    "/calico.policy.v1.PolicyService/ListProfiles": _READ,
    "/calico.policy.v1.PolicyService/GetEndpointProfiles": _READ,
    "/calico.policy.v1.PolicyService/Explain": _READ,
    "/calico.policy.v1.PolicyService/GetPolicySettings": _READ,
    "/calico.policy.v1.PolicyService/DeleteProfile": {"node": _RULES, "scheduler": _RULES},
    "/calico.policy.v1.PolicyService/UpdateTags": {"node": _RULES, "scheduler": _RULES},
    "/calico.policy.v1.PolicyService/UpdateRules": {"node": _RULES, "scheduler": _RULES},
    "/calico.policy.v1.PolicyService/SetEndpointProfiles": {"node": _RULES,
                                                            "scheduler": allow},
    # BGP
    "/calico.bgp.v1.BgpService/RegisterNode": {"node": own_node_record, "scheduler": _NODES},
    "/calico.bgp.v1.BgpService/GetNode": _READ,
    "/calico.bgp.v1.BgpService/ListNodes": _READ,
    "/calico.bgp.v1.BgpService/DeleteNode": {"node": _NODES, "scheduler": _NODES},
    "/calico.bgp.v1.BgpService/GetBgpConfig": _READ,
    "/calico.bgp.v1.BgpService/SetBgpConfig": {"node": _BGP, "scheduler": _BGP},
    "/calico.bgp.v1.BgpService/AddPeer": {"node": _BGP, "scheduler": _BGP},
    "/calico.bgp.v1.BgpService/RemovePeer": {"node": _BGP, "scheduler": _BGP},
    "/calico.bgp.v1.BgpService/ListPeers": _READ,
    "/calico.bgp.v1.BgpService/GetNodeStatus": _READ,
}
# The endpoint service: a node's own, and schedulers'.
for _method in ("AddEndpoint", "RemoveEndpoint", "AddAddress", "RemoveAddress",
                "ListEndpoints", "GetEndpoint", "SetProfiles", "GetNodeInfo"):
    TABLE[f"/calico.endpoint.v1.EndpointService/{_method}"] = {"node": local_node,
                                                             "scheduler": allow}


class Authorizer:
    """Applies TABLE. ``node`` is set on a node's endpoint service (whose
    node it is)."""

    def __init__(self, node: str = "", table: dict[str, dict[str, Rule]] | None = None):
        self.node = node
        self.table = TABLE if table is None else table
        self._logged: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def check(self, identity: str, method: str, request) -> str | None:
        """None if ``identity`` may make this call, else the one-line reason."""
        caller = Caller(identity)
        if caller.kind == ADMIN or method.lstrip("/").split("/")[0] in OPEN_SERVICES:
            return None
        rule = self.table.get(method, {}).get(caller.kind) if caller.name else None
        if caller.kind not in ("node", "scheduler") or not caller.name:
            why = "it is not an identity calico-py knows"
        elif rule is None:
            why = "this call is the administrator's"
        else:
            why = rule(caller, request, self)
            if why is None:
                return None
        what = resource(request)
        name = method.rsplit("/", 1)[-1]
        message = f"{identity} lacks permission for {name}{f' ({what})' if what else ''}: {why}."
        self._log_once(identity, method, what, message)
        return message

    def _log_once(self, identity: str, method: str, what: str, message: str) -> None:
        key = (identity, method, what)
        with self._lock:
            if key in self._logged or len(self._logged) > 10000:
                return
            self._logged.add(key)
        log.warning("denied %s %s: %s", identity, method, message)
