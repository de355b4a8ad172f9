"""The IPAM driver ("calico-ipam"): Docker asks, the IPAM service decides.

Docker wants a pool per network and an address per endpoint. A network made
without ``--subnet`` gets a placeholder pool (0.0.0.0/0 or ::/0) that stands
for "every Calico pool"; with ``--subnet`` the subnet must be a Calico pool and
addresses come from it only. The gateway is given with the pool, so Docker
never asks for one: Calico workloads route through their host.

Each address is claimed under a handle of its own, ``<node>/docker-ipam/<n>``,
that names this node: Docker releases an address by value, so the handle is
found from the allocation, and ``calicoctl ipam`` shows who holds it. The
claim's request id is ``<n>`` too, so an IPAM call retried (on another
replica) gets the same address rather than a second one. The network
driver names the handle in the endpoint it makes for the address
(``handle_of``), which is how IPAM's garbage collector tells a live Docker
address from one whose container never came (the plugin died between the
claim and its answer, or Docker lost the answer).
"""

from __future__ import annotations

import ipaddress
import threading
import uuid

from calico.ipam.v1 import ipam_pb2
from calicopy import failpoints
from calicopy.errors import FailedPrecondition, InvalidArgument

ADDRESS_SPACES = {"LocalDefaultAddressSpace": "CalicoLocal",
                  "GlobalDefaultAddressSpace": "CalicoGlobal"}
ANY_POOL = {4: "0.0.0.0/0", 6: "::/0"}
GATEWAY_KEY = "com.docker.network.gateway"
REQUEST_TYPE_KEY = "RequestAddressType"
HANDLE_ORCHESTRATOR = "docker-ipam"
# Addresses this process claimed, remembered (as a hint) for the network
# driver's CreateEndpoint, which comes right after.
REMEMBERED = 1024


def _pool_id(cidr: str) -> str:
    return f"calico:{cidr}"


def _cidr_of(pool_id: str) -> str:
    if not pool_id.startswith("calico:"):
        raise InvalidArgument(f"Pool {pool_id} was not made by calico-ipam.")
    return pool_id[len("calico:"):]


class IpamDriver:
    def __init__(self, ipam, node: str):
        self.ipam = ipam            # a calicopy.rpc.Client of the IPAM service
        self.node = node
        # Called with an address before it is released: the network driver
        # removes an endpoint Docker gave up that still holds it.
        self.before_release = lambda ip: None
        self._handles: dict[str, str] = {}      # address -> handle, newest last
        self._lock = threading.Lock()

    def methods(self) -> dict:
        return {
            "IpamDriver.GetCapabilities": lambda _: {"RequiresMACAddress": False},
            "IpamDriver.GetDefaultAddressSpaces": lambda _: dict(ADDRESS_SPACES),
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": lambda _: {},
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
        }

    def request_pool(self, req: dict) -> dict:
        version = 6 if req.get("V6") else 4
        if req.get("SubPool"):
            raise InvalidArgument("calico-ipam does not support --ip-range: create a Calico "
                                  "pool for the range and use it as --subnet.")
        wanted = req.get("Pool") or ""
        if not wanted:
            cidr = ANY_POOL[version]
        else:
            try:
                cidr = str(ipaddress.ip_network(wanted, strict=False))
            except ValueError:
                raise InvalidArgument(f"Invalid subnet '{wanted}'.") from None
            pools = [p.cidr for p in self.ipam.call("ListPools", ipam_pb2.ListPoolsRequest()).pools]
            if cidr not in pools:
                have = ", ".join(pools) or "none yet"
                raise FailedPrecondition(
                    f"Subnet {cidr} is not a Calico pool (pools: {have}). Use a pool as "
                    "--subnet, add one with 'calicoctl pool add', or leave --subnet out.")
        return {"PoolID": _pool_id(cidr), "Pool": cidr,
                "Data": {GATEWAY_KEY: ANY_POOL[version]}}

    def request_address(self, req: dict) -> dict:
        cidr = _cidr_of(req.get("PoolID", ""))
        pool = ipaddress.ip_network(cidr)
        if (req.get("Options") or {}).get(REQUEST_TYPE_KEY) == GATEWAY_KEY:
            raise InvalidArgument("Calico networks route through their host and have no "
                                  "gateway address: leave --gateway out.")
        claim = uuid.uuid4().hex
        handle = f"{self.node}/{HANDLE_ORCHESTRATOR}/{claim}"
        attrs = {"node": self.node, "orchestrator": "docker"}
        wanted = req.get("Address") or ""
        if wanted:
            try:
                ip = ipaddress.ip_address(wanted.split("/")[0])
            except ValueError:
                raise InvalidArgument(f"Invalid IP address '{wanted}'.") from None
            if ip not in pool:
                raise InvalidArgument(f"{ip} is not in this network's subnet {cidr}.")
            self.ipam.call("AssignIP", ipam_pb2.AssignIPRequest(
                ip=str(ip), handle_id=handle, hostname=self.node, attributes=attrs))
        else:
            only = [] if pool.prefixlen == 0 else [cidr]
            v6 = pool.version == 6
            resp = self.ipam.call("AutoAssign", ipam_pb2.AutoAssignRequest(
                num_ipv4=0 if v6 else 1, num_ipv6=1 if v6 else 0, handle_id=handle,
                hostname=self.node, attributes=attrs, request_id=claim,
                ipv4_pools=[] if v6 else only, ipv6_pools=only if v6 else []))
            ip = ipaddress.ip_address((list(resp.ipv6) if v6 else list(resp.ipv4))[0])
        failpoints.reached("docker-ipam-after-claim")     # claimed, Docker not told yet
        with self._lock:
            self._handles.pop(str(ip), None)
            self._handles[str(ip)] = handle
            while len(self._handles) > REMEMBERED:
                del self._handles[next(iter(self._handles))]
        return {"Address": f"{ip}/{ip.max_prefixlen}", "Data": {}}

    def handle_of(self, ip: str) -> str:
        """The handle that holds ``ip`` ("" if none): remembered from the
        claim, else asked of IPAM (a plugin restarted in between)."""
        with self._lock:
            handle = self._handles.get(ip)
        if handle is None:
            found = self.ipam.call("GetAllocation", ipam_pb2.GetAllocationRequest(ip=ip))
            handle = found.handle_id if found.allocated else ""
        return handle

    def release_address(self, req: dict) -> dict:
        """Idempotent: Docker may release an address twice (after a crash)."""
        text = (req.get("Address") or "").split("/")[0]
        try:
            ip = str(ipaddress.ip_address(text))
        except ValueError:
            raise InvalidArgument(f"Invalid IP address '{text}'.") from None
        found = self.ipam.call("GetAllocation", ipam_pb2.GetAllocationRequest(ip=ip))
        prefix = f"{self.node}/{HANDLE_ORCHESTRATOR}/"
        if found.allocated and found.handle_id.startswith(prefix):
            self.before_release(ip)
            self.ipam.call("ReleaseByHandle",
                           ipam_pb2.ReleaseByHandleRequest(handle_id=found.handle_id))
        return {}
