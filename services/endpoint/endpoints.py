"""Endpoints on one node: add, change, remove, and reconcile after a crash.

Invariants, and how each operation keeps them:

- Nothing is half made. ``add`` first records its intent in etcd (state
  ``pending``), then claims addresses (each tagged with the endpoint id),
  programs the kernel, marks the record ``active`` (with ``awaiting_policy``
  when the node has an agent to wait for) and, once the agent has programmed
  it, clears that flag. Any failure undoes what was done; a crash leaves a
  pending or awaiting record that the next start tears down (interface
  removed, tagged addresses released, record deleted): an add whose caller
  could not have seen it succeed never becomes a workload.
- No address leaks. Every address this service claims carries the endpoint
  id as an IPAM attribute; reconciling releases the endpoint's addresses that
  its record does not list (a crash between claiming and recording): at
  every start, and every LEAK_CHECK_EVERY seconds after (one IPAM call per
  endpoint, the one part of a reconcile that costs the cluster's IPAM).
- A malformed record under the node's prefix is treated as absent (its
  interface is an orphan; an add of its workload replaces it) and reported
  (calicopy.quarantine), never fatal.
- The record is the truth for the kernel: ``reconcile`` makes every live
  endpoint's interface, addresses and routes match it, tears down endpoints
  whose workload is gone, and deletes ``cali`` interfaces nobody owns.

Operations on one workload are serialised by a lock per workload; reconcile
takes the same locks, so it never races an operation in flight.

Calls to IPAM that allocate carry a request id (derived from the record the
add or address change is about, so a retried IPAM call gets the same
addresses) and, when the caller gave a deadline, a deadline IPAM_RESERVE
seconds before it: IPAM gives up before it would commit after this service
had to give up and tear down.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import threading
import time
from collections import defaultdict
from typing import Protocol

from calicopy import failpoints
from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store, Txn
from calicopy.model.record import BadRecord, decode
from calicopy.quarantine import Quarantine
from calicopy.errors import (AlreadyExists, CalicoError, DeadlineExceeded, NotFound,
                             Unavailable)
from calicopy import netns
from services.endpoint.errors import (AlreadyNetworked, BadRequest, EndpointNotFound,
                                     InterfaceInUse, NoEndpoints, NoIpv6, NotPreassigned,
                                     OrchestratorOwned)
from services.endpoint.kernel import InterfaceSpec
from services.endpoint.progress import PolicyProgress
from calicopy.model.endpoint import ACTIVE, PENDING, AddRequest, Endpoint, endpoint_id

log = logging.getLogger(__name__)

DEFAULT_INTERFACE = "eth0"
MAX_AUTO = 64
MIN_MTU, MAX_MTU = 68, 65535    # IPv4's minimum; a veth's maximum
MIN_MTU_IPV6 = 1280             # below it the kernel turns IPv6 off on the link
# Seconds of a caller's deadline kept for what an add does after IPAM (the
# kernel, the record, a teardown on failure).
IPAM_RESERVE = 1.0
LEAK_CHECK_EVERY = 600.0
# Seconds before the caller's deadline by which an add stops waiting for its
# policy: past it the add is undone, not finished, so that an add whose caller
# gave up (and saw it fail) never becomes a workload.
REPLY_RESERVE = 0.5
_ORCHESTRATOR_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\Z")
_INTERFACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")


class IpamApi(Protocol):
    """What endpoints need from IPAM (the IPAM service's client, or in unit
    tests the IPAM domain object itself)."""

    def auto_assign(self, num_ipv4, num_ipv6, handle_id, host, attributes,
                    ipv4_pools, ipv6_pools, request_id="", deadline=None
                    ) -> tuple[list[str], list[str]]: ...

    def assign_ip(self, ip, handle_id, host, attributes, deadline=None): ...

    def release_ips(self, ips, handle_id=None): ...

    def release_by_handle(self, handle_id) -> list[str]: ...

    def handle_allocations(self, handle_id) -> list[dict]: ...

    def get_allocation(self, ip) -> dict: ...


class Dataplane(Protocol):
    def check_workload(self, path: str, workload: str) -> None:
        """Raise unless ``path`` is a live network namespace other than the
        host's (without blocking, whatever the path is)."""

    def workload_alive(self, path: str) -> bool: ...

    def namespace_id(self, path: str) -> str: ...

    def ensure(self, spec: InterfaceSpec) -> str: ...

    def remove(self, host_interface: str) -> None: ...

    def host_interfaces(self) -> set[str]: ...

    def workload_has_interface(self, path: str, name: str) -> bool: ...


_MAC_RE = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}\Z")


def _mac(text: str) -> str:
    mac = text.strip().lower()
    if mac and (not _MAC_RE.match(mac) or int(mac[:2], 16) & 1):
        raise BadRequest(f"Invalid MAC address '{text}': give a unicast MAC such as "
                         "02:00:00:00:00:01.")
    return mac


def _mtu(mtu: int, ipv6: bool) -> int:
    if mtu and not MIN_MTU <= mtu <= MAX_MTU:
        raise BadRequest(f"Invalid mtu {mtu}: give {MIN_MTU} to {MAX_MTU}, or 0 for the "
                         "kernel's default (1500).")
    if mtu and ipv6 and mtu < MIN_MTU_IPV6:
        raise BadRequest(f"mtu {mtu} is too small for IPv6 addresses: the kernel needs at "
                         f"least {MIN_MTU_IPV6}.")
    return mtu


def _fingerprint(req: AddRequest, interface: str, path: str) -> str:
    """What identifies a retry of the same add: everything the caller asked for."""
    wanted = [path, interface, req.peer_name, sorted(req.ips), req.auto_ipv4, req.auto_ipv6,
              sorted(req.ipv4_pools), sorted(req.ipv6_pools), list(req.profile_ids),
              sorted(req.labels.items()), req.ips_preassigned, req.persistent, req.mac]
    if req.mtu:     # only when set: records made before mtu existed still match a retry
        wanted.append(req.mtu)
    return hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:32]


def _workload(orchestrator: str, workload_id: str) -> None:
    if not _ORCHESTRATOR_RE.match(orchestrator or ""):
        raise BadRequest(f"Invalid orchestrator '{orchestrator}': use lower-case letters, "
                         "digits, '.', '_' or '-'.")
    if not workload_id or len(workload_id) > 256 or not workload_id.isprintable() \
            or any(c.isspace() for c in workload_id):
        raise BadRequest(f"Invalid workload id '{workload_id}': it must be 1-256 printable "
                         "characters without spaces.")


def _interface(name: str) -> str:
    name = name or DEFAULT_INTERFACE
    if not _INTERFACE_RE.match(name) or name in (".", ".."):
        raise BadRequest(f"Invalid interface name '{name}': use 1-15 letters, digits, "
                         "'.', '_' or '-'.")
    return name


def _ipam_deadline(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - IPAM_RESERVE


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise BadRequest(f"Invalid IP address '{text}'.") from None


class EndpointManager:
    """The endpoints of one node."""

    def __init__(self, store: Store, ipam: IpamApi, dataplane: Dataplane, node: str,
                 ipv6: bool = True, policy_wait: float = 0.0,
                 quarantine: Quarantine | None = None, default_mtu=None):
        self.store = store
        # Malformed records under this node's prefix: skipped as if absent, reported.
        self.quarantine = quarantine or Quarantine(log)
        self.ipam = ipam
        self.dataplane = dataplane
        self.node = node
        self.ipv6 = ipv6
        # With a policy agent on the node: how long an add waits for it to
        # program the endpoint before giving up (0: no agent, no wait).
        self.policy_wait = policy_wait
        self._progress = PolicyProgress(store, node)    # its watch is made at the first wait
        # The MTU of an endpoint added without one (services.endpoint.mtu); 0: the kernel's.
        self.default_mtu = default_mtu or (lambda: 0)
        self._locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._in_flight: set[str] = set()      # keys of pending records of adds running
        self._next_leak_check = float("-inf")   # see LEAK_CHECK_EVERY

    # Reads -------------------------------------------------------------------

    def list(self, orchestrator: str = "", workload_id: str = "") -> list[Endpoint]:
        return [ep for ep, _ in self._records(orchestrator, workload_id)]

    def get(self, ep_id: str) -> Endpoint:
        for ep, _ in self._records():
            if ep.endpoint_id == ep_id:
                return ep
        raise EndpointNotFound(f"Endpoint {ep_id} not found on node {self.node}.")

    def _records(self, orchestrator: str = "", workload_id: str = ""
                 ) -> list[tuple[Endpoint, KV]]:
        prefix = (keys.workload_prefix(self.node, orchestrator, workload_id) if workload_id
                  else keys.node_endpoints_prefix(self.node))
        found, bad = [], {}
        for kv in self.store.list(prefix):
            if keys.is_endpoint(kv.key):
                try:
                    found.append((decode(kv, Endpoint.from_json), kv))
                except BadRecord as exc:
                    bad[exc.key] = exc.why
        self.quarantine.update(prefix, bad)
        return sorted(found, key=lambda f: (f[0].orchestrator, f[0].workload_id,
                                            f[0].interface_name))

    def _one(self, orchestrator, workload_id, interface) -> tuple[Endpoint, KV]:
        for ep, kv in self._records(orchestrator, workload_id):
            if ep.interface_name == interface and ep.state == ACTIVE:
                if ep.detached:
                    raise OrchestratorOwned(workload_id, orchestrator)
                return ep, kv
        raise NoEndpoints(workload_id)

    # Add -----------------------------------------------------------------------

    def add(self, req: AddRequest, deadline: float | None = None) -> Endpoint:
        """Add the endpoint; ``deadline`` is the caller's (time.monotonic())."""
        _workload(req.orchestrator, req.workload_id)
        interface = _interface(req.interface_name)
        explicit = [_ip(ip) for ip in req.ips]
        mac = _mac(req.mac)
        for name, count in (("auto_ipv4", req.auto_ipv4), ("auto_ipv6", req.auto_ipv6)):
            if not 0 <= count <= MAX_AUTO:
                raise BadRequest(f"{name} must be between 0 and {MAX_AUTO}, not {count}.")
        if not explicit and not req.auto_ipv4 and not req.auto_ipv6:
            raise BadRequest("No address requested: give ips, auto_ipv4 or auto_ipv6.")
        if req.ips_preassigned and (req.auto_ipv4 or req.auto_ipv6 or not explicit):
            raise BadRequest("Pre-assigned addresses are given in ips; do not ask for "
                             "auto-assignment too.")
        mtu = _mtu(req.mtu or self.default_mtu(),
                   bool(req.auto_ipv6) or any(":" in ip for ip in explicit))
        path = netns.path_for(req.netns_path, req.pid)
        if req.peer_name:
            _interface(req.peer_name)
            if path:
                raise BadRequest("Give either a namespace (netns_path or pid) or peer_name, "
                                 "not both.")
        elif not path:
            raise BadRequest("Say where the workload is: netns_path or pid.")

        with self._locks[(req.orchestrator, req.workload_id)]:
            ep_id = endpoint_id(self.node, req.orchestrator, req.workload_id, interface)
            key = keys.endpoint(self.node, req.orchestrator, req.workload_id, ep_id)
            # The checks, in the order the original tool made them.
            fingerprint = _fingerprint(req, interface, path)
            existing = self.store.get(key)
            malformed = existing is not None and self._malformed(existing)
            if existing is not None and not malformed:
                return self._repeat(existing, path, fingerprint, mtu)
            if path:
                self.dataplane.check_workload(path, req.workload_id)
            for ip in explicit:
                allocation = self.ipam.get_allocation(ip)   # raises if outside every pool
                if req.ips_preassigned and not allocation["allocated"]:
                    raise NotPreassigned(ip)
                holder = allocation.get("attributes", {}).get("endpoint")
                if req.ips_preassigned and holder:
                    raise AlreadyExists(f"{ip} belongs to endpoint {holder}; it cannot be "
                                        "pre-assigned to another.")
            if not self.ipv6 and (req.auto_ipv6 or any(":" in ip for ip in explicit)):
                raise NoIpv6()
            if path and self.dataplane.workload_has_interface(path, interface):
                raise InterfaceInUse(interface, req.workload_id)

            ep = Endpoint(ep_id, self.node, req.orchestrator, req.workload_id, interface,
                          path, PENDING, mac=mac, profile_ids=list(req.profile_ids),
                          labels=dict(req.labels), persistent=req.persistent,
                          request=fingerprint, mtu=mtu,
                          netns_id=self.dataplane.namespace_id(path) if path else "")
            # A malformed record in its place counts as absent: this add replaces it.
            pending = Txn().put(key, existing if malformed else None, ep.to_json())
            created = self.store.commit(pending)
            if not created:
                raise AlreadyNetworked(req.workload_id)
            self._in_flight.add(key)
            ipam_deadline = _ipam_deadline(deadline)
            try:
                ips = list(explicit) if req.ips_preassigned else []
                for ip in [] if req.ips_preassigned else explicit:
                    self.ipam.assign_ip(ip, ep.handle, self.node, self._attrs(ep),
                                        deadline=ipam_deadline)
                    ips.append(ip)
                if req.auto_ipv4 or req.auto_ipv6:
                    v4, v6 = self.ipam.auto_assign(
                        req.auto_ipv4, req.auto_ipv6, ep.handle, self.node,
                        self._attrs(ep), list(req.ipv4_pools), list(req.ipv6_pools),
                        request_id=f"add:{ep_id}@{created}", deadline=ipam_deadline)
                    ips += v4 + v6
                failpoints.reached("endpoint-add-after-claim")
                ep.set_ips(ips)
                ep.mac = self.dataplane.ensure(self._spec(ep, req.peer_name))
                failpoints.reached("endpoint-add-after-kernel")
                self._activate(ep, KV(key, pending.puts[key], created), deadline,
                               confirm=True)
            except BaseException:
                self._teardown(ep, key)
                raise
            finally:
                self._in_flight.discard(key)
            log.info("added endpoint %s for %s/%s: %s", ep_id, ep.orchestrator,
                     ep.workload_id, ", ".join(ep.ips))
            return ep

    def _activate(self, ep: Endpoint, kv: KV, deadline: float | None = None,
                  confirm: bool = False) -> None:
        """Mark ``ep`` active, conditional on the record we last wrote (if anyone
        changed or removed it meanwhile, this operation has lost), and wait for
        its policy (no later than the caller's ``deadline``). With ``confirm``
        (a new endpoint), the record says it awaits its policy until then."""
        ep.state = ACTIVE
        ep.awaiting_policy = confirm and bool(self.policy_wait)
        txn = Txn().update(kv, ep.to_json())
        # The watch taken before the commit sees the agent's answer to it.
        watch = self._progress.watching() if self.policy_wait else None
        revision = self.store.commit(txn)
        if not revision:
            raise CalicoError(f"The record of endpoint {ep.endpoint_id} changed during the "
                              "add; retry.")
        self._await_policy(revision, deadline, watch)
        if ep.awaiting_policy:
            self._confirm(ep, KV(kv.key, txn.puts[kv.key], revision))

    def _confirm(self, ep: Endpoint, kv: KV) -> None:
        """Clear the record's ``awaiting_policy``: the add is done. Only the
        flag changes (the policy service may have set its profiles meanwhile)."""
        for _ in range(5):
            current = Endpoint.from_json(kv.json())
            if current.endpoint_id != ep.endpoint_id or current.state != ACTIVE:
                break
            current.awaiting_policy = False
            if self.store.commit(Txn().update(kv, current.to_json())):
                ep.awaiting_policy = False
                return
            kv = self.store.get(kv.key)
            if kv is None:
                break
        raise CalicoError(f"The record of endpoint {ep.endpoint_id} changed during the "
                          "add; retry.")

    def _malformed(self, kv: KV) -> bool:
        try:
            decode(kv, Endpoint.from_json)
        except BadRecord as exc:
            self.quarantine.note(exc.key, exc.why)
            return True
        return False

    def _repeat(self, kv: KV, path: str, fingerprint: str, mtu: int) -> Endpoint:
        """An add for a workload that has the endpoint already. The same
        request again (a caller retrying after a timeout) gets the endpoint
        as it is; a persistent endpoint whose workload was stopped comes back
        in the new namespace with its addresses and MAC (and the MTU asked for
        now); anything else is a duplicate."""
        ep = Endpoint.from_json(kv.json())
        if ep.state == ACTIVE and ep.request == fingerprint and \
                (ep.detached or self._alive(ep)):
            return ep
        if not (ep.persistent and ep.state == ACTIVE and path and not self._alive(ep)):
            raise AlreadyNetworked(ep.workload_id)
        self.dataplane.check_workload(path, ep.workload_id)
        if self.dataplane.workload_has_interface(path, ep.interface_name):
            raise InterfaceInUse(ep.interface_name, ep.workload_id)
        ep.netns, ep.request, ep.mtu = path, fingerprint, _mtu(mtu, bool(ep.ipv6_nets))
        ep.netns_id = self.dataplane.namespace_id(path)
        try:
            self.dataplane.ensure(self._spec(ep))
            self._activate(ep, kv)
        except BaseException:
            self.dataplane.remove(ep.host_interface)    # dormant again, as before
            raise
        log.info("reinstated endpoint %s of %s/%s in %s", ep.endpoint_id, ep.orchestrator,
                 ep.workload_id, path)
        return ep

    def _alive(self, ep: Endpoint) -> bool:
        """Whether the endpoint's workload still runs: its namespace path is
        live and still names the namespace it was added in (a /proc/<pid> path
        names another one once the pid is reused)."""
        return self.dataplane.workload_alive(ep.netns) and \
            (not ep.netns_id or self.dataplane.namespace_id(ep.netns) == ep.netns_id)

    def _attrs(self, ep: Endpoint) -> dict[str, str]:
        return {"node": self.node, "endpoint": ep.endpoint_id, "interface": ep.interface_name}

    @staticmethod
    def _spec(ep: Endpoint, peer_name: str = "") -> InterfaceSpec:
        return InterfaceSpec(ep.host_interface, ep.netns, ep.interface_name, ep.ips, ep.mac,
                             ep.workload_id, peer_name, ep.mtu)

    def _await_policy(self, revision: int, deadline: float | None = None,
                      watch=None) -> None:
        """Return once the node's policy agent has programmed etcd as of
        ``revision`` (so a new workload never runs without its policy). With
        the caller's ``deadline``, wait no longer than REPLY_RESERVE before it:
        the caller would see a failure, so the add must fail (and be undone).
        ``watch``: PolicyProgress.watching() from before the commit."""
        if not self.policy_wait:
            return
        wait = self.policy_wait
        if deadline is not None and deadline - REPLY_RESERVE - time.monotonic() < wait:
            wait = deadline - REPLY_RESERVE - time.monotonic()
            if not self._progress.wait(revision, max(0.0, wait), watch):
                raise DeadlineExceeded(
                    f"The policy agent of node {self.node} had not programmed the endpoint "
                    "by the caller's deadline; the add was undone.")
            return
        if not self._progress.wait(revision, wait, watch):
            raise Unavailable(f"The policy agent of node {self.node} did not program the "
                              f"endpoint within {self.policy_wait:g}s; is it running? "
                              "(see policy.log in the node's state folder)")

    # Remove ----------------------------------------------------------------------

    def remove(self, orchestrator: str, workload_id: str, interface: str = "") -> list[Endpoint]:
        _workload(orchestrator, workload_id)
        with self._locks[(orchestrator, workload_id)]:
            records = self._records(orchestrator, workload_id)
            eps = [(ep, kv) for ep, kv in records
                   if not interface or ep.interface_name == interface]
            if not eps:
                raise NoEndpoints(workload_id)
            whole = len(eps) == len(records)
            for ep, kv in eps:
                self._teardown(ep, kv.key, whole_workload=whole)
                log.info("removed endpoint %s of %s/%s", ep.endpoint_id, orchestrator,
                         workload_id)
            return [ep for ep, _ in eps]

    def _teardown(self, ep: Endpoint, key: str, whole_workload: bool = False) -> None:
        """Undo everything an endpoint may have: interface, addresses, record.
        The record goes last, so a failure part-way is retried by reconcile.
        Addresses are found through IPAM, not the record, so that ones claimed
        but never recorded go too."""
        self.dataplane.remove(ep.host_interface)
        if whole_workload:
            self.ipam.release_by_handle(ep.handle)
        else:
            mine = [a["ip"] for a in self.ipam.handle_allocations(ep.handle)
                    if a["attributes"].get("endpoint") == ep.endpoint_id]
            if mine:
                self.ipam.release_ips(mine, ep.handle)
        kv = self.store.get(key)
        if kv is not None:
            self.store.commit(Txn().delete(kv))

    # Addresses -------------------------------------------------------------------

    def add_address(self, orchestrator, workload_id, interface, ip_text="", auto_ipv4=0,
                    auto_ipv6=0, ipv4_pools=(), ipv6_pools=(),
                    deadline: float | None = None) -> Endpoint:
        """Add a given address, or auto-assigned ones, to an endpoint
        (``deadline``: the caller's, a time.monotonic() time)."""
        _workload(orchestrator, workload_id)
        interface = _interface(interface)
        ip = _ip(ip_text) if ip_text else ""
        if bool(ip) == bool(auto_ipv4 or auto_ipv6) or not 0 <= auto_ipv4 + auto_ipv6 <= MAX_AUTO:
            raise BadRequest("Give either one address or a small number of addresses to "
                             "auto-assign.")
        with self._locks[(orchestrator, workload_id)]:
            ep, kv = self._one(orchestrator, workload_id, interface)
            if ip:
                if ip in ep.ips:
                    raise AlreadyExists(f"{workload_id} already has the address {ip}.")
                self.ipam.get_allocation(ip)
            if not self.ipv6 and (auto_ipv6 or ":" in ip):
                raise NoIpv6()
            _mtu(ep.mtu, bool(auto_ipv6) or ":" in ip)
            ipam_deadline = _ipam_deadline(deadline)
            if ip:
                self.ipam.assign_ip(ip, ep.handle, self.node, self._attrs(ep),
                                    deadline=ipam_deadline)
                new = [ip]
            else:
                # The record's revision names this change: a retried IPAM call
                # repeats it, a later AddAddress (the record changed) does not.
                v4, v6 = self.ipam.auto_assign(
                    auto_ipv4, auto_ipv6, ep.handle, self.node, self._attrs(ep),
                    list(ipv4_pools), list(ipv6_pools),
                    request_id=f"address:{ep.endpoint_id}@{kv.mod_revision}",
                    deadline=ipam_deadline)
                new = v4 + v6
            before = list(ep.ips)
            try:
                ep.set_ips(before + new)
                self.dataplane.ensure(self._spec(ep))
                revision = self.store.commit(Txn().update(kv, ep.to_json()))
                if not revision:
                    raise CalicoError(f"The record of {workload_id} changed under us; retry.")
            except BaseException:
                ep.set_ips(before)
                try:
                    self.dataplane.ensure(self._spec(ep))
                finally:
                    self.ipam.release_ips(new, ep.handle)
                raise
            # Recorded: the addresses are the workload's now, whatever happens next.
            self._await_policy(revision)
            return ep

    def remove_address(self, orchestrator, workload_id, interface, ip_text) -> Endpoint:
        _workload(orchestrator, workload_id)
        interface = _interface(interface)
        ip = _ip(ip_text)
        with self._locks[(orchestrator, workload_id)]:
            ep, kv = self._one(orchestrator, workload_id, interface)
            if ip not in ep.ips:
                raise NotFound("IP address is not assigned to container. Aborting.")
            ep.set_ips([x for x in ep.ips if x != ip])
            # Record first: after a crash, reconcile finishes the job from it.
            if not self.store.commit(Txn().update(kv, ep.to_json())):
                raise CalicoError(f"The record of {workload_id} changed under us; retry.")
            self.dataplane.ensure(self._spec(ep))
            self.ipam.release_ips([ip], ep.handle)
            return ep

    # Profiles --------------------------------------------------------------------

    def set_profiles(self, ep_id: str, profile_ids: list[str]) -> Endpoint:
        ep = self.get(ep_id)
        with self._locks[(ep.orchestrator, ep.workload_id)]:
            for ep, kv in self._records(ep.orchestrator, ep.workload_id):
                if ep.endpoint_id == ep_id:
                    ep.profile_ids = list(profile_ids)
                    if self.store.commit(Txn().update(kv, ep.to_json())):
                        return ep
            raise CalicoError(f"Endpoint {ep_id} changed under us; retry.")

    # Reconcile -------------------------------------------------------------------

    def _reconcile_one(self, ep: Endpoint, kv: KV, startup: bool, counts: dict,
                       leaks: bool = True) -> None:
        with self._locks[(ep.orchestrator, ep.workload_id)]:
            current = self.store.get(kv.key)
            if current is None or self._malformed(current):
                return
            ep = Endpoint.from_json(current.json())
            abandoned = (ep.state == PENDING or ep.awaiting_policy) and \
                (startup or kv.key not in self._in_flight)
            # A detached endpoint's orchestrator removes it; a persistent one
            # waits, dormant, for its workload to start again.
            gone = ep.state == ACTIVE and not ep.detached and not self._alive(ep)
            if gone and ep.persistent:
                return
            if abandoned or gone:
                log.info("tearing down %s endpoint %s of %s/%s", ep.state, ep.endpoint_id,
                         ep.orchestrator, ep.workload_id)
                self._teardown(ep, kv.key)
                counts["removed"] += 1
                return
            if ep.state != ACTIVE:
                return
            mac = self.dataplane.ensure(self._spec(ep))
            if mac != ep.mac:
                ep.mac = mac
                self.store.commit(Txn().update(current, ep.to_json()))
                counts["restored"] += 1
            if not leaks:
                return
            leaked = [a["ip"] for a in self.ipam.handle_allocations(ep.handle)
                      if a["attributes"].get("endpoint") == ep.endpoint_id
                      and a["ip"] not in ep.ips]
            if leaked:
                log.info("releasing %s, claimed for %s but not recorded", leaked, ep.endpoint_id)
                self.ipam.release_ips(leaked, ep.handle)
                counts["released"] += len(leaked)

    def reconcile(self, startup: bool = False) -> dict[str, int]:
        """Make the kernel and IPAM match the records; see the module docstring.

        A pending record whose add is not running in this process (at start-up:
        every one) belongs to an add that died or could not undo itself.
        """
        counts = {"restored": 0, "removed": 0, "released": 0, "orphans": 0}
        # Interfaces first: any interface seen here had its record written
        # before it was created, so the record listing below includes it.
        interfaces = self.dataplane.host_interfaces()
        records = self._records()
        leaks = startup or time.monotonic() >= self._next_leak_check
        if leaks:
            self._next_leak_check = time.monotonic() + LEAK_CHECK_EVERY
        for ep, kv in records:
            try:
                self._reconcile_one(ep, kv, startup, counts, leaks)
            except CalicoError as exc:      # one bad endpoint must not stop the rest
                log.error("reconciling endpoint %s failed: %s", ep.endpoint_id, exc)
                self._next_leak_check = float("-inf")   # (IPAM down?) look again next time
        owned = {ep.host_interface for ep, _ in records}
        for name in sorted(interfaces - owned):
            log.info("removing %s, which no endpoint owns", name)
            self.dataplane.remove(name)
            counts["orphans"] += 1
        return counts
