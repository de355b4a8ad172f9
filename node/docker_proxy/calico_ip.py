"""Calico networking for the containers that ask for it with CALICO_IP.

A container whose environment holds ``CALICO_IP`` (an address, ``auto`` or
``ipv4``, ``ipv6``, a pool's CIDR, or several of these separated by commas)
and optionally ``CALICO_PROFILE`` (profile names, comma-separated; created
with the default rules when missing) is created with network mode ``none``
and, once running, gets one endpoint ``eth0`` from this node's endpoint
service: orchestrator ``docker``, workload id the full container id,
persistent, labelled ``created-by=docker-proxy``.

Nothing is remembered here. The engine holds the request (the environment
stays in the container's config) and etcd holds the endpoint: a persistent
endpoint keeps its addresses and MAC while the container is stopped, comes
back in the container's new namespace when it runs again, and ends when the
container is removed. So any start (through the proxy, by the engine itself,
or seen only at the next reconcile) is networked the same way, and a removal
missed while the proxy was down is caught by ``reconcile``.

Operations on one container are serialised by a lock per container id.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
from typing import Protocol

from calicopy import logs, metrics
from calicopy.docker_engine import Engine
from calicopy.errors import (AlreadyExists, CalicoError, FailedPrecondition, InvalidArgument,
                             NotFound, Unavailable)
from calicopy.model.endpoint import ACTIVE, AddRequest, Endpoint
from calicopy.model.policy import NAME_RE

log = logging.getLogger("docker-proxy")

ORCHESTRATOR = "docker"
INTERFACE = "eth0"
LABELS = {"created-by": "docker-proxy"}
#: Endpoints keyed by a container id, made by the proxy or `calicoctl container add`
#: (Docker's network driver keys its endpoints by Docker endpoint ids instead).
CONTAINER_KEYED = ("docker-proxy", "calicoctl")
BAD_IP = ("Invalid CALICO_IP '{}': give an IP address, 'auto' (or 'ipv4'), 'ipv6' or a pool "
          "CIDR, or several of these separated by commas.")
BAD_PROFILE = ("Invalid CALICO_PROFILE '{}': profile names must be <30 character long and can "
               "only contain numbers, letters and underscores.")


class Refused(Exception):
    """What the Docker client is told instead of the engine's answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Endpoints(Protocol):
    """This node's endpoint service (its gRPC client, or in unit tests the
    EndpointManager itself)."""

    def add(self, req: AddRequest) -> Endpoint: ...

    def remove(self, orchestrator: str, workload_id: str, interface: str = "") -> list: ...

    def list(self, orchestrator: str = "", workload_id: str = "") -> list[Endpoint]: ...


class Profiles(Protocol):
    def create(self, name: str) -> object:
        """Create a profile with the default rules; AlreadyExists if it exists."""


@dataclasses.dataclass
class Wanted:
    """What a container's environment asks for."""
    fields: dict            # AddRequest address fields
    profiles: list[str]


def env_values(env: list[str] | None) -> dict[str, str]:
    values = {}
    for item in env or []:
        name, _, value = item.partition("=")
        values[name] = value
    return values


def address_fields(text: str) -> dict:
    fields = {"ips": [], "auto_ipv4": 0, "auto_ipv6": 0, "ipv4_pools": [], "ipv6_pools": []}
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise Refused(400, BAD_IP.format(text))
    for item in items:
        word = item.lower()
        try:
            if word in ("auto", "ipv4", "ipv6"):
                fields["auto_ipv6" if word == "ipv6" else "auto_ipv4"] += 1
            elif "/" in item:
                net = ipaddress.ip_network(item, strict=False)
                fields[f"ipv{net.version}_pools"].append(str(net))
                fields[f"auto_ipv{net.version}"] += 1
            else:
                fields["ips"].append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise Refused(400, BAD_IP.format(text)) from None
    return fields


def wanted(env: list[str] | None) -> Wanted | None:
    """The container's request, None when it has no CALICO_IP; Refused when malformed."""
    values = env_values(env)
    if "CALICO_IP" not in values:
        return None
    text = values.get("CALICO_PROFILE", "")
    profiles = [p.strip() for p in text.split(",")] if text.strip() else []
    if not all(NAME_RE.match(p) for p in profiles):
        raise Refused(400, BAD_PROFILE.format(text))
    return Wanted(address_fields(values["CALICO_IP"]), profiles)


def _status(exc: CalicoError) -> int:
    if isinstance(exc, (InvalidArgument, FailedPrecondition)):
        return 400
    if isinstance(exc, AlreadyExists):
        return 409
    if isinstance(exc, Unavailable):
        return 503
    return 500


class ContainerNetworking:
    """What Calico does for the containers of one engine on one node."""

    def __init__(self, engine: Engine, endpoints: Endpoints, profiles: Profiles):
        self.engine = engine
        self.endpoints = endpoints
        self.profiles = profiles
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _lock(self, cid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(cid, threading.Lock())

    # Create ------------------------------------------------------------------------

    def prepare_create(self, body: dict) -> bool:
        """Rewrite a ``containers/create`` body that asks for Calico: network
        mode none (we give it its interface). Returns whether it changed."""
        if wanted(body.get("Env")) is None:
            return False
        host = body.get("HostConfig") or {}
        mode = host.get("NetworkMode") or ""
        if mode not in ("", "default", "bridge", "none"):
            raise Refused(400, f"CALICO_IP gives the container its network; it cannot be "
                               f"combined with --net={mode}.")
        host["NetworkMode"] = "none"
        body["HostConfig"] = host
        networking = body.get("NetworkingConfig") or {}
        if networking.get("EndpointsConfig"):
            networking["EndpointsConfig"] = {k: v for k, v in
                                             networking["EndpointsConfig"].items() if k == "none"}
        return True

    # Start, restart ------------------------------------------------------------------

    def ensure(self, ref: str, stop_on_failure: bool) -> Endpoint | None:
        """Network a running container that asks for it (or re-instate its
        persistent endpoints in its new namespace); idempotent. On failure,
        with ``stop_on_failure``, the container is stopped (it must not run
        without the network it asked for) and Refused says why; otherwise
        the failure is logged."""
        return self._ensure_ref(ref, stop_on_failure)[0]

    def _ensure_ref(self, ref: str, stop: bool) -> tuple[Endpoint | None, bool]:
        """(the container's endpoint, whether anything was done)."""
        try:
            with self.engine.inspecting(f"container named {ref}") as docker:
                info = docker.containers.get(ref).attrs
        except NotFound:
            return None, False
        # A container's start enters calico-py here: its own request id
        # (calicopy.logs) goes with every call made to network it.
        with logs.request(), self._lock(info["Id"]):
            try:
                ep, acted = self._ensure(info)
            except (Refused, CalicoError) as exc:
                metrics.DOCKER_PROXY_NETWORKED.inc(result="error")
                self._failed(info, exc, stop)
                return None, False
            if acted:
                metrics.DOCKER_PROXY_NETWORKED.inc(result="ok")
            return ep, acted

    def _ensure(self, info: dict) -> tuple[Endpoint | None, bool]:
        cid, state = info["Id"], info.get("State") or {}
        if not state.get("Running") or not state.get("Pid"):
            return None, False
        want = wanted((info.get("Config") or {}).get("Env"))
        try:
            eps = self.endpoints.list(ORCHESTRATOR, cid)
        except CalicoError as exc:
            if want is not None:
                raise
            # Calico being away must not stop containers that never asked for it.
            log.warning("cannot look up the endpoints of container %s: %s", cid[:12], exc)
            return None, False
        pid = int(state["Pid"])
        if not eps:
            if want is None:
                return None, False
            mode = (info.get("HostConfig") or {}).get("NetworkMode")
            if mode != "none":
                raise Refused(400, f"it was not created through the Calico Docker proxy "
                                   f"(its network mode is {mode}, not none); create it again "
                                   "through the proxy's socket.")
            for name in want.profiles:
                try:
                    self.profiles.create(name)
                    log.info("created profile %s for container %s", name, cid[:12])
                except AlreadyExists:
                    pass
            ep = self.endpoints.add(AddRequest(
                orchestrator=ORCHESTRATOR, workload_id=cid, pid=pid, interface_name=INTERFACE,
                profile_ids=want.profiles, labels=dict(LABELS), persistent=True, **want.fields))
            log.info("networked container %s: %s", cid[:12], ", ".join(ep.ips))
            return ep, True
        acted = False
        for ep in eps:
            if ep.persistent and not (ep.netns == f"/proc/{pid}/ns/net" and ep.state == ACTIVE):
                self.endpoints.add(AddRequest(
                    orchestrator=ORCHESTRATOR, workload_id=cid, pid=pid,
                    interface_name=ep.interface_name, ips=ep.ips, persistent=True,
                    profile_ids=ep.profile_ids, labels=ep.labels))
                log.info("re-instated endpoint %s of container %s: %s", ep.endpoint_id,
                         cid[:12], ", ".join(ep.ips))
                acted = True
        eps = self.endpoints.list(ORCHESTRATOR, cid) if acted else eps
        return next((e for e in eps if e.interface_name == INTERFACE), eps[0]), acted

    def _failed(self, info: dict, exc: Exception, stop: bool) -> None:
        cid = info["Id"]
        name = (info.get("Name") or "").lstrip("/") or cid[:12]
        calico_ip = env_values((info.get("Config") or {}).get("Env")).get("CALICO_IP")
        # A container that exited by itself meanwhile has nothing to network.
        try:
            with self.engine.inspecting(f"container named {cid}") as docker:
                container = docker.containers.get(cid)
            now = container.attrs.get("State") or {}
        except CalicoError:
            now = {}
        if not now.get("Running") or now.get("Pid") != (info.get("State") or {}).get("Pid"):
            log.info("container %s exited while being networked (%s)", name, exc)
            return
        what = f" (CALICO_IP={calico_ip})" if calico_ip is not None else ""
        message = f"Calico could not network container {name}{what}: {exc}"
        if not stop:
            log.error("%s", message)
            return
        try:
            with self.engine.calls(f"Docker could not stop container {cid}"):
                container.stop(timeout=0)
            message += " The container was stopped."
        except CalicoError as stop_exc:
            message += f" Stopping the container failed too: {stop_exc}"
        log.error("%s", message)
        raise Refused(exc.status if isinstance(exc, Refused) else _status(exc), message)

    # Inspect -----------------------------------------------------------------------

    def describe(self, doc: dict) -> bool:
        """Fill an inspect document's address fields from the container's
        endpoint, the way Docker fills them for its own networks. Returns
        whether it changed; the endpoint service being away changes nothing."""
        config, state = doc.get("Config") or {}, doc.get("State") or {}
        mode = (doc.get("HostConfig") or {}).get("NetworkMode")
        if not state.get("Running") or not ("CALICO_IP" in env_values(config.get("Env"))
                                             or mode == "none"):
            return False
        try:
            eps = self.endpoints.list(ORCHESTRATOR, doc["Id"])
        except CalicoError as exc:
            log.warning("cannot describe container %s: %s", doc["Id"][:12], exc)
            return False
        if not eps:
            return False
        ep = next((e for e in eps if e.interface_name == INTERFACE), eps[0])
        v4 = [n.split("/")[0] for n in ep.ipv4_nets]
        v6 = [n.split("/")[0] for n in ep.ipv6_nets]
        settings = doc.get("NetworkSettings") or {}
        settings.update({
            "IPAddress": v4[0] if v4 else "", "IPPrefixLen": 32 if v4 else 0,
            "Gateway": ep.ipv4_gateway, "GlobalIPv6Address": v6[0] if v6 else "",
            "GlobalIPv6PrefixLen": 128 if v6 else 0, "IPv6Gateway": ep.ipv6_gateway,
            "MacAddress": ep.mac})
        doc["NetworkSettings"] = settings
        return True

    # Remove ------------------------------------------------------------------------

    def release(self, cid: str) -> None:
        """The container is gone: end its endpoints and release their addresses."""
        with logs.request(), self._lock(cid):
            try:
                removed = self.endpoints.remove(ORCHESTRATOR, cid)
            except NotFound:
                removed = []
        with self._guard:
            self._locks.pop(cid, None)
        if removed:
            log.info("container %s removed: released %s", cid[:12],
                     ", ".join(ip for ep in removed for ip in ep.ips) or "no addresses")

    def container_id(self, ref: str) -> str | None:
        try:
            with self.engine.inspecting(f"container named {ref}") as docker:
                return docker.containers.get(ref).id
        except NotFound:
            return None

    # Reconcile ---------------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Make the endpoints match the engine: endpoints of containers that no
        longer exist are removed; running containers that ask for Calico, or
        have persistent endpoints, are networked."""
        counts = {"removed": 0, "networked": 0}
        keyed = {ep.workload_id for ep in self.endpoints.list()
                 if ep.orchestrator == ORCHESTRATOR
                 and ep.labels.get("created-by") in CONTAINER_KEYED}
        for cid in sorted(keyed):
            if self.container_id(cid) is None:
                self.release(cid)
                counts["removed"] += 1
        with self.engine.calls("Docker could not list containers") as docker:
            # sparse: the list's own summaries, not an inspect per container
            running = docker.containers.list(sparse=True)
        for container in running:
            cid = container.id
            if cid in keyed or (container.attrs.get("HostConfig") or {}).get(
                    "NetworkMode") == "none":
                counts["networked"] += self._ensure_ref(cid, stop=False)[1]
        return counts
