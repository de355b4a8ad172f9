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
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
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
    for cls, c in _CODES:
        if c == code:
            if cls is errors.Unavailable and not details.startswith("Error accessing"):
                return errors.Unavailable(f"The {service} cannot be reached ({details}).")
            return cls(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Unavailable(f"The {service} did not answer in time.")
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


def create_server(addr: str | list[str], register: Iterable[Callable[[grpc.Server], None]],
                  service_names: Iterable[str], max_workers: int = 16
                  ) -> tuple[grpc.Server, int]:
    """Build (not start) a server on ``addr`` with health and reflection.

    ``addr`` is one address or several (``host:port``, port 0 picks one, or
    ``unix:<path>``); the port bound for the first is returned.
    """
    # Here, not at the top: clients (the CNI plugin) should not pay for them.
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
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
    for a in [addr] if isinstance(addr, str) else addr:
        port = server.add_insecure_port(a)
        if port == 0 and not a.startswith("unix:"):
            raise OSError(f"cannot listen on {a}")
        ports.append(port)
    return server, ports[0]


def channel(target: str) -> grpc.Channel:
    """The one way a calico-py process opens a channel to a service."""
    return grpc.insecure_channel(target)


def check_health(addr: str, service: str = "", timeout: float = 2.0) -> bool:
    """True when the server at ``addr`` reports SERVING for ``service``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with channel(addr) as ch:
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
    own messages per status code (calicoctl, the CNI plugin)."""

    def __init__(self, name: str, target: str, stub_class, timeout: float):
        self.name, self.target, self.timeout = name, target, timeout
        self._channel = channel(target)
        self._stub = stub_class(self._channel)

    def invoke(self, method: str, request, timeout: float | None = None):
        return getattr(self._stub, method)(request, timeout=timeout or self.timeout)

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
