"""Calling calico-py's services from a plugin.

One channel per service, opened on first use; every call has the
configured deadline. A failed call raises ``RpcFailure`` (status name,
details, which service where), which the plugin turns into a CNI error with
``to_cni``: the one place that maps gRPC status codes to CNI codes.

grpc and the generated messages are imported here, when a plugin first
needs a service, not by VERSION or by input that fails validation.
"""

from __future__ import annotations

import grpc

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


class Clients:
    """Stubs of the endpoint, IPAM and policy services; close() when done."""

    _SERVICES = {
        "endpoint": ("endpoint service", "endpoint_addr",
                     "calico.endpoint.v1.endpoint_pb2_grpc", "EndpointServiceStub"),
        "ipam": ("IPAM service", "ipam_addr", "calico.ipam.v1.ipam_pb2_grpc",
                 "IpamServiceStub"),
        "policy": ("policy service", "policy_addr", "calico.policy.v1.policy_pb2_grpc",
                   "PolicyServiceStub"),
    }

    def __init__(self, services: Services):
        self.services = services
        self._open: dict[str, tuple] = {}

    def _stub(self, name: str):
        if name not in self._open:
            label, attr, module, stub = self._SERVICES[name]
            import importlib
            target = getattr(self.services, attr)
            channel = grpc.insecure_channel(target)
            self._open[name] = (channel, getattr(importlib.import_module(module), stub)(channel),
                                label, target)
        return self._open[name]

    def call(self, service: str, method: str, request):
        _, stub, label, target = self._stub(service)
        try:
            return getattr(stub, method)(request, timeout=self.services.timeout)
        except grpc.RpcError as exc:
            raise RpcFailure(exc.code().name, exc.details() or "", label, target) from None

    def close(self) -> None:
        for channel, *_ in self._open.values():
            channel.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
