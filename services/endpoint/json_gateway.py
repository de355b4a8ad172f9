"""The endpoint service's RPCs as JSON over HTTP/1.1, on a unix socket next to its gRPC one.

gRPC-JSON transcoding in its simplest form, for local clients that start a
process per call (the CNI plugin), to which importing grpc and protobuf would
cost more than the call itself::

    POST /calico.endpoint.v1.EndpointService/<Method> HTTP/1.1
    Content-Length: ...

    <the request message in the proto3 JSON mapping>

The body (whatever its Content-Type) is parsed by
``google.protobuf.json_format`` (field names as in the proto, or their
lowerCamelCase JSON names; an unknown field is an error; an empty body is
the empty message). The answer is ``200`` with the response message as JSON
(field names as in the proto; fields at their default value left out, as the
mapping says), or another status with ``{"code": "<gRPC status name>",
"message": "..."}``: the status the gRPC server would have given, and the
HTTP status grpc-gateway gives it (``HTTP_STATUS``). An unknown method is
404 ``UNIMPLEMENTED``; a body that is not JSON of the request message is 400
``INVALID_ARGUMENT``. A ``Grpc-Timeout`` header (gRPC's format, e.g. ``10S``
or ``500m``; grpc-gateway honours it too) is the call's deadline, which the
servicer bounds its own calls by; without it the call has none.

No logic of its own: a call runs the same ``EndpointServicer`` method, over
the same ``EndpointManager``, as the gRPC server, and a domain error becomes a
status in the same place (``calicopy.rpc.maps_errors`` and ``status_for``):
the context handed to the servicer raises ``CallFailed`` where gRPC's would
end the RPC. The socket's path is ``calicopy.config.endpoint_json_socket`` of
the gRPC address, so every caller finds it the same way.

Only root is served, as through the gRPC socket: the socket is 0600 from the
moment it is bound (calicopy.localfiles), and each connection's peer
credentials (SO_PEERCRED, the uid of the process that connected) are checked
besides, so a process that gets past the file mode without being root (a
capability, a descriptor passed on) is answered ``403 PERMISSION_DENIED``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler

import grpc
from google.protobuf import json_format

from calico.endpoint.v1 import endpoint_pb2
from calicopy import logs
from services.endpoint.endpoints import EndpointManager
from services.endpoint.local_socket import LocalSocketServer, peer_uid
from services.endpoint.servicer import EndpointServicer

log = logging.getLogger(__name__)

SERVICE = endpoint_pb2.DESCRIPTOR.services_by_name["EndpointService"]
PATH_PREFIX = f"/{SERVICE.full_name}/"
MAX_BODY = 1 << 20
MAX_CONCURRENT = 16         # as many calls at once as the gRPC server's workers
IDLE_TIMEOUT = 60.0         # seconds a kept-alive connection may wait for its next request

S = grpc.StatusCode
#: gRPC status -> HTTP status, as grpc-gateway maps them; anything else is 500.
HTTP_STATUS = {
    S.OK: 200, S.INVALID_ARGUMENT: 400, S.FAILED_PRECONDITION: 400, S.OUT_OF_RANGE: 400,
    S.UNAUTHENTICATED: 401, S.PERMISSION_DENIED: 403, S.NOT_FOUND: 404,
    S.ALREADY_EXISTS: 409, S.ABORTED: 409, S.RESOURCE_EXHAUSTED: 429, S.CANCELLED: 499,
    S.UNIMPLEMENTED: 501, S.UNAVAILABLE: 503, S.DEADLINE_EXCEEDED: 504,
}


class CallFailed(Exception):
    """A call ended with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status = http_status or HTTP_STATUS.get(code, 500)


class _Context:
    """The part of ``grpc.ServicerContext`` the servicer uses: ``abort``,
    which here raises instead of ending an RPC, ``time_remaining``, and trailing
    metadata, which JSON has no use for."""

    def __init__(self, timeout: float | None = None):
        self._deadline = None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def abort(code: grpc.StatusCode, details: str):
        raise CallFailed(code, details)

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    @staticmethod
    def set_trailing_metadata(metadata) -> None:
        pass


_TIMEOUT_RE = re.compile(r"(\d{1,8})([HMSmun])\Z")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(text: str) -> float:
    """Seconds, from a gRPC ``grpc-timeout`` value (digits and a unit)."""
    found = _TIMEOUT_RE.match(text.strip())
    if not found:
        raise CallFailed(S.INVALID_ARGUMENT, f"Invalid Grpc-Timeout '{text}': give digits and "
                         "a unit (H, M, S, m, u or n), e.g. 10S.")
    return int(found.group(1)) * _TIMEOUT_UNITS[found.group(2)]


class JsonGateway(LocalSocketServer):
    """Serves ``SERVICE``'s methods of an ``EndpointServicer`` on ``path``."""

    name = "json-gateway"

    def __init__(self, path: str, manager: EndpointManager):
        super().__init__(path)
        servicer = EndpointServicer(manager)
        # Method name -> (the servicer's method, its request class).
        self._methods = {m.name: (getattr(servicer, m.name),
                                  getattr(endpoint_pb2, m.input_type.name))
                         for m in SERVICE.methods}
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)

    # One call, without HTTP: what tests and the handler use -----------------------

    def call(self, url_path: str, body: bytes, timeout: float | None = None
             ) -> tuple[int, bytes]:
        """(HTTP status, JSON body) for a POST of ``body`` to ``url_path``,
        within ``timeout`` seconds (the caller's deadline) if given."""
        try:
            response = self._call(url_path, body, timeout)
            status, answer = 200, json_format.MessageToDict(
                response, preserving_proto_field_name=True)
        except CallFailed as failed:
            status, answer = failed.http_status, {"code": failed.code.name,
                                                  "message": failed.message}
        return status, json.dumps(answer, separators=(",", ":")).encode()

    def _call(self, url_path: str, body: bytes, timeout: float | None):
        name = url_path[len(PATH_PREFIX):] if url_path.startswith(PATH_PREFIX) else None
        if name not in self._methods:
            raise CallFailed(S.UNIMPLEMENTED, f"Unknown method {url_path}: POST to "
                             f"{PATH_PREFIX}<method>, one of "
                             f"{', '.join(sorted(self._methods))}.", 404)
        method, request_class = self._methods[name]
        request = request_class()
        try:
            data = json.loads(body.decode()) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, not {type(data).__name__}")
            json_format.ParseDict(data, request)
        except (ValueError, json_format.ParseError) as exc:   # UnicodeDecodeError too
            raise CallFailed(S.INVALID_ARGUMENT, f"Invalid {request_class.DESCRIPTOR.name} in "
                             f"the body: {exc}") from None
        with self._slots:
            return method(request, _Context(timeout))



class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "calico-endpoint-json"
    timeout = IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.peer_uid = peer_uid(self.request)

    def _refused(self) -> bool:
        """Answer 403 to anyone but root; True if so."""
        if self.peer_uid == 0:
            return False
        self.close_connection = True
        # Take what the caller is sending first, so that it reads our answer
        # rather than a broken pipe.
        length = self.headers.get("Content-Length", "0").strip()
        if length.isdigit() and int(length) <= MAX_BODY:
            self.rfile.read(int(length))
        self._answer(*self._failure(
            S.PERMISSION_DENIED, f"Only root may call the endpoint service; this process "
            f"runs as uid {self.peer_uid}.", 403))
        return True

    def do_POST(self) -> None:
        if self._refused():
            return
        gateway = self.server.owner
        if not gateway.enter():
            self.close_connection = True
            self._answer(*self._failure(S.UNAVAILABLE, "The endpoint service is stopping.", 503))
            return
        try:
            status, body = self._post(gateway)
        finally:
            gateway.leave()
        self._answer(status, body)

    def _post(self, gateway: JsonGateway) -> tuple[int, bytes]:
        # No Content-Length (and not chunked): no body, as HTTP/1.1 says.
        length = self.headers.get("Content-Length", "0").strip()
        if self.headers.get("Transfer-Encoding") or not length.isdigit():
            self.close_connection = True
            return self._failure(S.INVALID_ARGUMENT, "Give the body with its Content-Length "
                                 "(not chunked).", 411)
        length = int(length)
        if length > MAX_BODY:
            self.close_connection = True
            return self._failure(S.RESOURCE_EXHAUSTED,
                                 f"The body is larger than {MAX_BODY} bytes.", 413)
        body = self.rfile.read(length)
        header = self.headers.get("Grpc-Timeout")
        try:
            timeout = None if header is None else parse_grpc_timeout(header)
        except CallFailed as bad:
            return self._failure(bad.code, bad.message, bad.http_status)
        with logs.request(self.headers.get(logs.HTTP_HEADER)):
            return gateway.call(self.path, body, timeout)

    @staticmethod
    def _failure(code: grpc.StatusCode, message: str, http_status: int) -> tuple[int, bytes]:
        return http_status, json.dumps({"code": code.name, "message": message},
                                       separators=(",", ":")).encode()

    def _not_post(self) -> None:
        if self._refused():
            return
        self._answer(*self._failure(S.UNIMPLEMENTED, f"{self.command} is not served: POST "
                                    "the request message as JSON.", 405),
                     {"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_post

    def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:     # noqa: A002 (the base's name)
        # Not to stderr, and without the client address (a unix socket has none).
        log.debug("%s", format % args)


JsonGateway.handler = _Handler      # defined after the class it serves
