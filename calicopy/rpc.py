"""gRPC plumbing shared by every service and client.

Servers always serve ``grpc.health.v1`` and reflection; domain errors become
status codes in exactly one place (``status_for``) and back again in one
place (``error_from_rpc``). Every Python client of a calico-py service goes
through ``Client`` (its channel from ``channel``), so every call has a
deadline and every connection is made the same way.

A service may run as several replicas: a client is given all their
addresses and gRPC spreads calls over those that answer (round robin), so a
replica that dies or is still starting is passed over. ``Client`` calls wait
for a replica to be ready, up to the call's deadline, instead of failing at
once; calls that are safe to repeat (``IDEMPOTENT``) are retried on
UNAVAILABLE, e.g. when the replica serving one dies with it in flight. A
server that answers UNAVAILABLE itself (etcd or another dependency cannot be
reached: it has tried already) tells clients not to retry.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
import threading
import time
from concurrent import futures
from typing import Callable, Iterable, Sequence

import grpc

from calicopy import errors, logs, metrics

log = logging.getLogger(__name__)

_CODES = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
]


def status_for(exc: errors.CalicoError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_from_rpc(exc: grpc.RpcError, service: str) -> errors.CalicoError:
    """The domain error for a failed call to another calico-py service, so that
    a service calling a service passes the callee's status and message on."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # Our own deadline, or the callee giving up before it: to our caller
        # the service is as good as unreachable; retrying is safe.
        return errors.Unavailable(f"The {service} did not answer in time.")
    for cls, c in _CODES:
        if c == code:
            if cls is errors.Unavailable and not details.startswith("Error accessing"):
                return errors.Unavailable(f"The {service} cannot be reached ({details}).")
            return cls(details)
    return errors.CalicoError(f"The {service} failed: {code.name}: {details}")


# A server's answer that its client must not retry the call: gRPC's retry
# pushback. Sent with UNAVAILABLE from the service itself, which has retried
# its dependency (etcd) already; a client retries only a replica that died.
NO_RETRY = (("grpc-retry-pushback-ms", "-1"),)


def maps_errors(method: Callable) -> Callable:
    """Decorate a servicer method: domain errors abort the call with their
    status code and message; anything else is logged and reported INTERNAL."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except errors.CalicoError as exc:
            code = status_for(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                context.set_trailing_metadata(NO_RETRY)
            context.abort(code, str(exc))
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL,
                          f"Unexpected error in {method.__name__}; see the service log.")
    return wrapper


class _Authorize(grpc.ServerInterceptor):
    """Applies the authorisation table (calicopy.authz) to every unary call,
    with the caller's identity from its client certificate."""

    def __init__(self, authorizer):
        self.authorizer = authorizer

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler            # streams: health watch, reflection (open to all)
        inner, method = handler.unary_unary, details.method

        def checked(request, context):
            why = self.authorizer.check(identity(context), method, request)
            if why is not None:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            return inner(request, context)
        return grpc.unary_unary_rpc_method_handler(
            checked, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


_UNLOGGED = ("grpc.health.", "grpc.reflection.")


class _Observe(grpc.ServerInterceptor):
    """Outermost on every server: handles each unary call under its request
    id (from the caller's metadata, calicopy.logs; a new one if it sent
    none), counts it by method and status code, with its latency
    (calicopy.metrics), refusals by the authorisation table included, and
    logs it (health checks aside: starters poll them), so that every
    service a request went through has a line with its id."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method = handler.unary_unary, details.method.lstrip("/")
        sent = dict(details.invocation_metadata or ()).get(logs.METADATA_KEY)

        def observed(request, context):
            start = time.monotonic()
            code = None
            with logs.request(sent):
                try:
                    return inner(request, context)
                except Exception:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    code = code or context.code() or grpc.StatusCode.OK
                    took = time.monotonic() - start
                    metrics.GRPC_SERVER_HANDLED.inc(method=method, code=code.name)
                    metrics.GRPC_SERVER_SECONDS.observe(took, method=method)
                    if not method.startswith(_UNLOGGED):
                        log.info("%s answered %s to %s in %.1f ms", method, code.name,
                                 identity(context), took * 1000)
        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def identity(context) -> str:
    """The caller's identity: its certificate's common name; admin over a
    unix socket (only root can open ours) or a port served --insecure."""
    from calicopy.authz import INSECURE_IDENTITY
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else INSECURE_IDENTITY


def _unix_path(addr: str) -> str | None:
    return addr[len("unix:"):] if addr.startswith("unix:") else None


def create_server(addr: str | list[str], register: Iterable[Callable[[grpc.Server], None]],
                  service_names: Iterable[str], security=None, authorizer=None,
                  max_workers: int = 16) -> tuple[grpc.Server, int]:
    """Build (not start) a server on ``addr`` with health and reflection.

    ``addr`` is one address or several (``host:port``, port 0 picks one, or
    ``unix:<path>``); the port bound for the first is returned. TCP ports are
    served with mutual TLS (``security.tls``), or in plaintext only with
    ``security.insecure`` (logged); otherwise ConfigError. Unix sockets are
    made root-only. ``authorizer`` (calicopy.authz.Authorizer; default: the
    cluster services' table) decides every call.
    """
    # Here, not at the top: clients (the CNI plugin) should not pay for them.
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from calicopy.authz import Authorizer
    from calicopy.localfiles import private_socket, private_umask
    from calicopy.tls import Security, server_credentials
    security = security or Security()
    addrs = [addr] if isinstance(addr, str) else list(addr)
    for a in addrs:
        if _unix_path(a) is None and security.tls is None and not security.insecure:
            raise security.refuse_plaintext(a, "serve")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         interceptors=[_Observe(), _Authorize(authorizer or Authorizer())])
    for add in register:
        add(server)
    names = list(service_names)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for name in names + [""]:
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME], server)
    ports = []
    credentials = server_credentials(security.tls) if security.tls is not None else None
    for a in addrs:
        path = _unix_path(a)
        if path is not None:
            with private_umask():        # root-only from its first instant
                port = server.add_insecure_port(a)
            private_socket(path)
        elif credentials is not None:
            port = server.add_secure_port(a, credentials)
        else:
            log.warning("serving %s in PLAINTEXT (--insecure): anyone who reaches it acts as "
                        "admin; for throw-away labs only", a)
            port = server.add_insecure_port(a)
        if port == 0 and path is None:
            raise OSError(f"cannot listen on {a}")
        ports.append(port)
    return server, ports[0]


#: The calls a client may repeat after UNAVAILABLE without changing what
#: they do: reads, and writes that set a value (documented idempotent in the
#: protos). Creations, deletions, AutoAssign and AssignIP are not: a repeat
#: of one that was applied fails or allocates again.
IDEMPOTENT = {
    "calico.ipam.v1.IpamService": (
        "ListPools", "UpdatePool", "ReleaseByHandle", "GetAllocation",
        "ListHandleAllocations", "GetUsage", "CheckConsistency"),
    "calico.policy.v1.PolicyService": (
        "GetProfile", "ListProfiles", "UpdateRules", "GetEndpointProfiles",
        "SetEndpointProfiles", "Explain", "GetPolicySettings", "SetPolicySettings"),
    "calico.bgp.v1.BgpService": (
        "RegisterNode", "GetNode", "ListNodes", "GetBgpConfig", "SetBgpConfig", "ListPeers",
        "GetNodeStatus"),
    "calico.endpoint.v1.EndpointService": (
        "AddEndpoint", "ListEndpoints", "GetEndpoint", "SetProfiles", "GetNodeInfo"),
}

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": service, "method": method}
                 for service, methods in IDEMPOTENT.items() for method in methods],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})

# A replica that was down is reached again within seconds of its return, not
# after gRPC's default back-off (up to two minutes).
_OPTIONS = [("grpc.service_config", SERVICE_CONFIG),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000)]


def addresses(target: str | Sequence[str]) -> list[str]:
    """A service's addresses: a list, or one string of comma-separated ones."""
    items = target.split(",") if isinstance(target, str) else list(target)
    return [a.strip() for a in items if a.strip()]


def describe_target(target: str | Sequence[str]) -> str:
    """How messages name a service's addresses: as CALICO_*_ADDR gives them."""
    return ",".join(addresses(target))


def _split_hostport(addr: str) -> tuple[str, str]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _resolve(addrs: list[str]) -> list[tuple[str, str]]:
    """(IP, port) of every address; a name stands for each of its addresses,
    one that does not resolve (a replica not started yet) for none."""
    found: list[tuple[str, str]] = []
    for addr in addrs:
        host, port = _split_hostport(addr)
        if _is_ip(host):
            found.append((host, port))
            continue
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            log.debug("%s does not resolve (%s); leaving it out for now", host, exc)
            continue
        for info in infos:
            ip = info[4][0]
            if (ip, port) not in found:
                found.append((ip, port))
    return found


def grpc_target(target: str | Sequence[str]) -> str:
    """The gRPC target for one address (as it is) or several: unix sockets
    as one ``unix:`` target, TCP addresses resolved to one ``ipv4:`` or
    ``ipv6:`` list (IPv4 as mapped IPv6 addresses when both are there)."""
    addrs = addresses(target)
    if len(addrs) == 1:
        return addrs[0]
    if all(a.startswith("unix:") for a in addrs):
        return "unix:" + ",".join(a[len("unix:"):] for a in addrs)
    resolved = _resolve(addrs)
    if not resolved:
        return addrs[0]          # gRPC then says why it cannot reach it
    if all(ipaddress.ip_address(ip).version == 4 for ip, _ in resolved):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in resolved)
    return "ipv6:" + ",".join(
        f"[{ip if ':' in ip else '::ffff:' + ip}]:{port}" for ip, port in resolved)


def channel(target: str | Sequence[str], security=None) -> grpc.Channel:
    """The one way a calico-py process opens a channel to a service: unix
    sockets as they are, TCP addresses with mutual TLS (or plaintext only
    when ``security.insecure``). ``target`` is one address or several (a
    list, or comma-separated): the replicas of a service, all unix sockets
    or all ``host:port``. Every replica's certificate must then name the
    first address's host, which is what TLS checks the server's name
    against. ``security`` defaults to this process's environment
    (calicopy.tls.Security.from_env)."""
    from calicopy.tls import Security, channel_credentials
    addrs = addresses(target)
    options = list(_OPTIONS)
    if addrs[0].startswith("unix:"):
        return grpc.insecure_channel(grpc_target(addrs), options=options)
    security = security or Security.from_env()
    if len(addrs) > 1:
        options.append(("grpc.ssl_target_name_override", _split_hostport(addrs[0])[0]))
    if security.tls is not None:
        return grpc.secure_channel(grpc_target(addrs), channel_credentials(security.tls),
                                   options=options)
    if security.insecure:
        return grpc.insecure_channel(grpc_target(addrs), options=options)
    raise security.refuse_plaintext(describe_target(addrs), "call")


def check_health(addr: str | Sequence[str], service: str = "", timeout: float = 2.0,
                 security=None) -> bool:
    """True when the server at ``addr`` (or one of the replicas there)
    reports SERVING for ``service``; at once, without waiting for one."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with channel(addr, security) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING


class Unreachable(grpc.RpcError):
    """No replica of a service could be reached within a call's deadline:
    UNAVAILABLE, with what gRPC said about the last connection attempt
    (refused, no such socket, a TLS handshake that failed)."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return ()


class Client:
    """A stub for one service (at one address, or its replicas' addresses).
    ``call`` turns failures into domain errors (so a caller that is itself a
    service passes status and message on); ``invoke`` leaves them as
    ``grpc.RpcError`` for callers that word their own messages per status
    code (calicoctl, the CNI plugin). A call waits, up to its deadline, for a
    replica to be ready; when none was, it fails UNAVAILABLE (``Unreachable``,
    saying why the last connection failed), as it would have at once without
    the wait. When the TLS files change (rotation), the next call opens a new
    channel with them; so does the call after one that found no replica,
    when the replicas' addresses are names (they are resolved again).

    ``wait_for_ready`` (the default, for long-running processes) makes a call
    to a service that cannot be reached yet wait for it within the call's
    deadline; one-shot commands (calicoctl, the CNI plugin) turn it off, to
    say at once that no replica runs."""

    RECHECK = 2.0       # seconds between looks at the TLS files

    def __init__(self, name: str, target: str | Sequence[str], stub_class, timeout: float,
                 security=None, wait_for_ready: bool = True):
        from calicopy.tls import Security
        self.name, self.timeout = name, timeout
        self.wait_for_ready = wait_for_ready
        self.addresses = addresses(target)
        self.target = describe_target(self.addresses)
        self.security = security or Security.from_env()
        self._stub_class = stub_class
        # The service's full name, as the server's metrics name its methods.
        self._service = stub_class.__module__.rpartition(".")[0] + "." + \
            stub_class.__name__.removesuffix("Stub")
        self._lock = threading.Lock()
        self._open()

    @property
    def _resolved_here(self) -> bool:
        """Whether names in the addresses were resolved by us, once (several
        addresses); gRPC resolves a lone name again by itself."""
        return len(self.addresses) > 1 and not self.addresses[0].startswith("unix:") and \
            any(not _is_ip(_split_hostport(a)[0]) for a in self.addresses)

    def _open(self) -> None:
        self._channel = channel(self.addresses, self.security)
        self._stub = self._stub_class(self._channel)
        self._stamp = self.security.tls.stamp() if self.security.tls else None
        self._checked = time.monotonic()

    def _fresh_stub(self):
        if self.security.tls is not None and time.monotonic() - self._checked > self.RECHECK:
            with self._lock:
                self._checked = time.monotonic()
                if self.security.tls.stamp() != self._stamp:
                    old = self._channel
                    self._open()
                    old.close()
        return self._stub

    def invoke(self, method: str, request, timeout: float | None = None):
        start, code = time.monotonic(), "OK"
        try:
            return self._invoke(method, request, timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            raise
        finally:
            name = f"{self._service}/{method}"
            metrics.GRPC_CLIENT_HANDLED.inc(method=name, code=code)
            metrics.GRPC_CLIENT_SECONDS.observe(time.monotonic() - start, method=name)

    def _invoke(self, method: str, request, timeout: float | None):
        rid = logs.current_request_id()
        try:
            return getattr(self._fresh_stub(), method)(
                request, timeout=timeout or self.timeout, wait_for_ready=self.wait_for_ready,
                metadata=((logs.METADATA_KEY, rid),) if rid else None)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or not self.wait_for_ready:
                raise
            why = self._unreachable()
            if why is None:
                raise
            if self._resolved_here:
                with self._lock:            # resolve the names again next time; the
                    self._open()            # old channel goes with its last call
            raise Unreachable(why) from None

    def _unreachable(self) -> str | None:
        """After a deadline: None if a replica answers (the call was slow),
        else what gRPC says when it tries to connect now without waiting."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        try:
            health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2.0)
            return None
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                return None
            return exc.details() or "no replica is ready"

    def call(self, method: str, request, timeout: float | None = None):
        try:
            return self.invoke(method, request, timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"{self.name} at {self.target}") from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
