"""gRPC plumbing shared by every service and client.

Servers always serve ``grpc.health.v1`` and reflection; domain errors become
status codes in exactly one place (``status_for``) and back again in one
place (``error_from_rpc``). Every Python client of a calico-py service goes
through ``Client`` (its channel from ``channel``), so every call has a
deadline and every connection is made the same way.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent import futures
from typing import Callable, Iterable

import grpc

from calicopy import errors

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


def maps_errors(method: Callable) -> Callable:
    """Decorate a servicer method: domain errors abort the call with their
    status code and message; anything else is logged and reported INTERNAL."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except errors.CalicoError as exc:
            context.abort(status_for(exc), str(exc))
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
                         interceptors=[_Authorize(authorizer or Authorizer())])
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


def channel(target: str, security=None) -> grpc.Channel:
    """The one way a calico-py process opens a channel to a service: a unix
    socket as it is, a TCP address with mutual TLS (or plaintext only when
    ``security.insecure``). ``security`` defaults to this process's
    environment (calicopy.tls.Security.from_env)."""
    from calicopy.tls import Security, channel_credentials
    if target.startswith("unix:"):
        return grpc.insecure_channel(target)
    security = security or Security.from_env()
    if security.tls is not None:
        return grpc.secure_channel(target, channel_credentials(security.tls))
    if security.insecure:
        return grpc.insecure_channel(target)
    raise security.refuse_plaintext(target, "call")


def check_health(addr: str, service: str = "", timeout: float = 2.0, security=None) -> bool:
    """True when the server at ``addr`` reports SERVING for ``service``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with channel(addr, security) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING


class Client:
    """A stub for one service. ``call`` turns failures into domain errors (so a
    caller that is itself a service passes status and message on);
    ``invoke`` leaves them as ``grpc.RpcError`` for callers that word their
    own messages per status code (calicoctl, the CNI plugin). When the TLS
    files change (rotation), the next call opens a new channel with them.

    With ``wait_for_ready`` (the long-running node processes), a call to a
    service that cannot be reached yet (a unix socket not there yet, a port
    refusing) waits for it within the call's deadline instead of failing at
    once, and gRPC's reconnection back-off never makes a call fail while the
    service is already up; one-shot commands leave it off, to say at once
    that a service is not running."""

    RECHECK = 2.0       # seconds between looks at the TLS files

    def __init__(self, name: str, target: str, stub_class, timeout: float, security=None,
                 wait_for_ready: bool = False):
        from calicopy.tls import Security
        self.name, self.target, self.timeout = name, target, timeout
        self.wait_for_ready = wait_for_ready
        self.security = security or Security.from_env()
        self._stub_class = stub_class
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        self._channel = channel(self.target, self.security)
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
        return getattr(self._fresh_stub(), method)(request, timeout=timeout or self.timeout,
                                                    wait_for_ready=self.wait_for_ready)

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
