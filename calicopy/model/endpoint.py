"""The endpoint record: what etcd stores about one workload interface, and
what a caller asks for when it adds one.

The JSON field names follow the original tool's endpoint records (``name``
for the host-side interface, ``ipv4_nets``...), so that tools reading etcd see
the familiar shape. Endpoint records are written by their node's endpoint
service; the policy service changes only their ``profile_ids``; agents, the
BGP service and the Docker integration read them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress

from calicopy.model.record import RecordError, field, nets, strings

#: Every workload's IPv4 gateway: a link-local address the host answers by
#: proxy ARP, so workloads need no per-host knowledge.
IPV4_GATEWAY = "169.254.1.1"
#: The MAC of every host-side interface, and the link-local address the kernel
#: derives from it: the workloads' IPv6 gateway.
HOST_MAC = "ee:ee:ee:ee:ee:ee"
IPV6_GATEWAY = "fe80::ecee:eeff:feee:eeee"

INTERFACE_PREFIX = "cali"
PENDING, ACTIVE = "pending", "active"
#: The endpoint label in which Docker's network driver names the IPAM
#: handles of the endpoint's addresses (comma-separated): what ties an
#: address the Docker IPAM driver claimed to the endpoint that uses it.
DOCKER_IPAM_HANDLES_LABEL = "docker-ipam-handles"
#: The routing protocol number of the host routes to workloads, so that they
#: are told apart from everyone else's (and BIRD learns exactly them).
ROUTE_PROTOCOL = 80


def endpoint_id(node: str, orchestrator: str, workload_id: str, interface: str) -> str:
    """Derived, not random, so that a retried add finds the same endpoint. The
    node is part of it: workload ids such as namespace names are only unique
    on their host."""
    digest = hashlib.sha256(f"{node}\0{orchestrator}\0{workload_id}\0{interface}".encode())
    return digest.hexdigest()[:32]


def ipam_handle(node: str, orchestrator: str, workload_id: str) -> str:
    """The IPAM handle owning a workload's addresses: the workload id, made
    unique across hosts and orchestrators."""
    return f"{node}/{orchestrator}/{workload_id}"


def host_interface(ep_id: str) -> str:
    return INTERFACE_PREFIX + ep_id[:11]


@dataclasses.dataclass
class Endpoint:
    endpoint_id: str
    node: str
    orchestrator: str
    workload_id: str
    interface_name: str
    netns: str
    state: str = PENDING
    mac: str = ""
    ipv4_nets: list[str] = dataclasses.field(default_factory=list)
    ipv6_nets: list[str] = dataclasses.field(default_factory=list)
    profile_ids: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    persistent: bool = False
    netns_id: str = ""      # the namespace's identity (device:inode), against path reuse
    request: str = ""       # fingerprint of the add that made it (retries match it)
    mtu: int = 0            # of both veth ends; 0: the kernel's default, not enforced
    # Active (programmed by the agent) but its add has not finished: it waits for
    # its policy. An add that died then is torn down, as a pending one is.
    awaiting_policy: bool = False

    @property
    def detached(self) -> bool:
        """The orchestrator placed and configured the workload side (Docker's
        network driver); this service owns only the host side."""
        return not self.netns

    @property
    def host_interface(self) -> str:
        return host_interface(self.endpoint_id)

    @property
    def handle(self) -> str:
        return ipam_handle(self.node, self.orchestrator, self.workload_id)

    @property
    def ips(self) -> list[str]:
        return [n.split("/")[0] for n in self.ipv4_nets + self.ipv6_nets]

    @property
    def ipv4_gateway(self) -> str:
        return IPV4_GATEWAY if self.ipv4_nets else ""

    @property
    def ipv6_gateway(self) -> str:
        return IPV6_GATEWAY if self.ipv6_nets else ""

    def set_ips(self, ips: list[str]) -> None:
        """Record the addresses in the order given (an address added later
        comes after the first ones, which stay the workload's primary
        addresses, as in the original tool), once each."""
        addrs = list(dict.fromkeys(ipaddress.ip_address(ip) for ip in ips))
        self.ipv4_nets = [f"{a}/32" for a in addrs if a.version == 4]
        self.ipv6_nets = [f"{a}/128" for a in addrs if a.version == 6]

    def to_json(self) -> dict:
        return {
            "endpoint_id": self.endpoint_id, "node": self.node,
            "orchestrator": self.orchestrator, "workload_id": self.workload_id,
            "container:if_name": self.interface_name, "netns": self.netns,
            "state": self.state, "name": self.host_interface, "mac": self.mac,
            "ipv4_nets": self.ipv4_nets, "ipv6_nets": self.ipv6_nets,
            "ipv4_gateway": self.ipv4_gateway, "ipv6_gateway": self.ipv6_gateway,
            "profile_ids": self.profile_ids, "labels": self.labels,
            "persistent": self.persistent, "request": self.request,
            "netns_id": self.netns_id, "mtu": self.mtu,
            **({"awaiting_policy": True} if self.awaiting_policy else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Endpoint":
        """The record as stored; RecordError says what is wrong with a malformed one."""
        state = field(data, "state", str, PENDING)
        if state not in (PENDING, ACTIVE):
            raise RecordError(f"field 'state' holds {state!r}, not {PENDING} or {ACTIVE}")
        labels = field(data, "labels", dict, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise RecordError(f"field 'labels' holds {labels!r}, not strings to strings")
        return cls(
            field(data, "endpoint_id", str), field(data, "node", str),
            field(data, "orchestrator", str), field(data, "workload_id", str),
            field(data, "container:if_name", str), field(data, "netns", str), state,
            field(data, "mac", str, ""), nets(data, "ipv4_nets", 4), nets(data, "ipv6_nets", 6),
            strings(data, "profile_ids"), dict(labels),
            persistent=field(data, "persistent", bool, False),
            netns_id=field(data, "netns_id", str, ""), request=field(data, "request", str, ""),
            mtu=field(data, "mtu", int, 0),
            awaiting_policy=field(data, "awaiting_policy", bool, False))


@dataclasses.dataclass
class AddRequest:
    """An endpoint add, as a caller states it (the AddEndpoint RPC's fields)."""

    orchestrator: str
    workload_id: str
    netns_path: str = ""
    pid: int = 0
    interface_name: str = ""
    ips: list[str] = dataclasses.field(default_factory=list)
    auto_ipv4: int = 0
    auto_ipv6: int = 0
    ipv4_pools: list[str] = dataclasses.field(default_factory=list)
    ipv6_pools: list[str] = dataclasses.field(default_factory=list)
    profile_ids: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    peer_name: str = ""             # detached: leave the workload side here
    ips_preassigned: bool = False   # the caller claimed (and releases) the ips
    persistent: bool = False        # survive the workload stopping
    mac: str = ""
    mtu: int = 0                    # of both veth ends; 0: the kernel's default
