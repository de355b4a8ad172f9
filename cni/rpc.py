"""Calling calico-py's services from a plugin.

- ``EndpointClient``: this node's endpoint service, through the JSON socket
  next to its gRPC one (``calicopy.config.endpoint_json_socket``; served by
  ``services/endpoint/json_gateway.py``): the proto3 JSON mapping of its
  RPCs, over HTTP/1.1 on a unix socket, with only the standard library. This
  is what ADD, DEL and CHECK use, so they import neither grpc nor protobuf,
  which would cost more than the call itself.
- ``Clients``: gRPC stubs of the IPAM and policy services (``calico-ipam``,
  STATUS, and the ``calico`` plugin's first ADD of a profile), one channel
  per service, opened on first use. grpc and the generated messages are
  imported only then.

Every call has the configured deadline. A failed call raises ``RpcFailure``
(status name, details, which service where), which the plugin turns into a
CNI error with ``to_cni``: the one place that maps status codes to CNI
codes. The JSON socket answers with the same status names as gRPC
(``{"code": "NOT_FOUND", "message": ...}``), so both map the same way; a
socket that cannot be reached is ``UNAVAILABLE``, no answer in time
``DEADLINE_EXCEEDED``, as with gRPC.
"""

from __future__ import annotations

import http.client
import json
import os
import socket

from calicopy import request_id
from cni import spec
from cni.config import Services
from cni.spec import CniError

# gRPC status -> CNI code. What is not listed is INTERNAL (100).
_CODES = {
    "UNAVAILABLE": spec.TRY_AGAIN_LATER,
    "DEADLINE_EXCEEDED": spec.TRY_AGAIN_LATER,
    "ABORTED": spec.TRY_AGAIN_LATER,
    "INVALID_ARGUMENT": spec.INVALID_CONFIG,
    "FAILED_PRECONDITION": spec.REJECTED,
    "NOT_FOUND": spec.REJECTED,
    "RESOURCE_EXHAUSTED": spec.POOL_EXHAUSTED,
    "ALREADY_EXISTS": spec.IN_USE,
}
_UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")

# gRPC's own log would add to the error the runtime shows; ours says it all.
# (Set before anything imports grpc: Clients is where the plugins do.)
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

ENDPOINT_SERVICE = "calico.endpoint.v1.EndpointService"


class RpcFailure(Exception):
    def __init__(self, status: str, details: str, service: str, target: str):
        super().__init__(details)
        self.status, self.details, self.service, self.target = status, details, service, target

    @property
    def unreachable(self) -> bool:
        return self.status in _UNREACHABLE

    def to_cni(self, code: int | None = None) -> CniError:
        where = f"{self.service} at {self.target}"
        if code is None:
            code = _CODES.get(self.status, spec.INTERNAL)
        if self.status == "DEADLINE_EXCEEDED":
            return CniError(code, f"The {where} did not answer in time.", self.status)
        if self.status == "UNAVAILABLE" and not self.details.startswith("Error accessing"):
            return CniError(code, f"The {where} cannot be reached.",
                            f"{self.status}: {self.details}")
        return CniError(code, self.details or f"The {where} failed.",
                        f"{self.status} from the {where}")


class Endpoint:
    """A ``calico.endpoint.v1.Endpoint`` from its JSON: every field of the
    message, at its proto3 default when the JSON leaves it out (as the
    mapping does for a default value)."""

    FIELDS = {"endpoint_id": str, "node": str, "orchestrator": str, "workload_id": str,
              "interface_name": str, "host_interface": str, "mac": str, "ipv4_nets": list,
              "ipv6_nets": list, "ipv4_gateway": str, "ipv6_gateway": str,
              "profile_ids": list, "labels": dict, "state": str, "netns": str,
              "persistent": bool, "mtu": int}

    def __init__(self, data: dict):
        for name, kind in self.FIELDS.items():
            setattr(self, name, data[name] if name in data else kind())


class EndpointClient:
    """This node's endpoint service through its JSON socket. Calls take and
    give the messages as dicts (field names as in the proto); a connection per
    call (a plugin makes one or two)."""

    label = "endpoint service"

    def __init__(self, services: Services):
        self.path, self.timeout = services.endpoint_json, services.timeout
        self.target = f"unix:{self.path}"

    def call(self, method: str, request: dict) -> dict:
        status, data = self._exchange(method, json.dumps(request).encode())
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self._failure("UNKNOWN", f"HTTP {status} with a body that is not a JSON "
                                f"object: {data[:200]!r}")
        if status != 200:
            raise self._failure(str(answer.get("code") or "UNKNOWN"),
                                str(answer.get("message") or f"HTTP {status}"))
        return answer

    def _exchange(self, method: str, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, body) of one POST of ``body`` to ``method``."""
        conn = _UnixConnection(self.path, self.timeout)
        try:
            # Our deadline, so that the service gives up (and undoes) first.
            conn.request("POST", f"/{ENDPOINT_SERVICE}/{method}", body,
                         {"Content-Type": "application/json",
                          "Grpc-Timeout": f"{max(1, int(self.timeout * 1000))}m",
                          request_id.HTTP_HEADER: request_id.current()})
            response = conn.getresponse()
            return response.status, response.read()
        except TimeoutError:
            raise self._failure("DEADLINE_EXCEEDED", "") from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._failure("UNAVAILABLE", f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    def _failure(self, status: str, details: str) -> RpcFailure:
        return RpcFailure(status, details, self.label, self.target)

    # The calls the plugin makes.

    def add_endpoint(self, **request) -> Endpoint:
        return Endpoint(self.call("AddEndpoint", request).get("endpoint", {}))

    def remove_endpoint(self, **request) -> list[Endpoint]:
        return [Endpoint(e) for e in self.call("RemoveEndpoint", request).get("removed", [])]

    def list_endpoints(self, **request) -> list[Endpoint]:
        return [Endpoint(e) for e in self.call("ListEndpoints", request).get("endpoints", [])]

    def get_node_info(self) -> dict:
        info = self.call("GetNodeInfo", {})
        return {"node": info.get("node", ""), "ipv4": bool(info.get("ipv4")),
                "ipv6": bool(info.get("ipv6"))}


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the unix socket ``path``."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Clients:
    """gRPC stubs of the IPAM and policy services; close() when done."""

    _SERVICES = {
        "ipam": ("IPAM service", "ipam_addr", "calico.ipam.v1.ipam_pb2_grpc",
                 "IpamServiceStub"),
        "policy": ("policy service", "policy_addr", "calico.policy.v1.policy_pb2_grpc",
                   "PolicyServiceStub"),
    }

    def __init__(self, services: Services):
        self.services = services
        self._open: dict = {}

    def _client(self, name: str):
        if name not in self._open:
            import importlib

            from calicopy.config import ConfigError
            from calicopy.rpc import Client
            label, attr, module, stub = self._SERVICES[name]
            try:
                self._open[name] = Client(label, getattr(self.services, attr),
                                          getattr(importlib.import_module(module), stub),
                                          self.services.timeout, self.services.security(),
                                          wait_for_ready=False)   # the runtime retries (11)
            except ConfigError as exc:          # no TLS for a TCP address, a bad file
                raise CniError(spec.INVALID_CONFIG, str(exc), "tls_ca_file") from None
        return self._open[name]

    def call(self, service: str, method: str, request):
        import grpc
        client = self._client(service)
        try:
            return client.invoke(method, request)
        except grpc.RpcError as exc:
            raise RpcFailure(exc.code().name, exc.details() or "", client.name,
                             client.target) from None

    def close(self) -> None:
        for client in self._open.values():
            client.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
