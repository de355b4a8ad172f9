"""Calls to the services, each with a deadline, failures as one readable line."""

from __future__ import annotations

import grpc

from calicopy import config, rpc
from cli.errors import CliError


class RpcFailure(Exception):
    """A service answered with an error status; ``str()`` is its message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class Service:
    """One service's client plus what is needed to explain a failure."""

    def __init__(self, name: str, param: config.Param, stub_class, addr: str | None = None,
                 hint: str = "'make up' starts it."):
        self.name = name
        self.param = param
        self.hint = hint
        addrs = addr or param.resolve()          # one address, or the replicas'
        self.addr = rpc.describe_target(addrs)
        self.timeout = config.RPC_TIMEOUT.resolve()
        # One-shot: say at once that no replica runs, rather than wait for one.
        self._client = rpc.Client(name, addrs, stub_class, self.timeout, wait_for_ready=False)

    def call(self, method: str, request):
        try:
            return self._client.invoke(method, request)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and _tls_failure(details):
                raise CliError(
                    f"The TLS handshake with the {self.name} at {self.addr} failed: the "
                    "server does not trust our certificate or we do not trust its "
                    f"(check CALICO_TLS_CA_FILE, CALICO_TLS_CERT_FILE, CALICO_TLS_KEY_FILE). "
                    f"gRPC said: {details}")
            if code == grpc.StatusCode.UNAVAILABLE and not details.startswith("Error accessing"):
                raise CliError(
                    f"Could not reach the {self.name} at {self.addr} (set "
                    f"{self.param.env[0]} to change it). Is it running? {self.hint}")
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CliError(f"The {self.name} at {self.addr} did not answer within "
                               f"{self.timeout:g}s (CALICO_RPC_TIMEOUT).")
            raise RpcFailure(code, details) from None


def _tls_failure(details: str) -> bool:
    """A refused handshake: ours (a server certificate we do not trust) or the
    server's (it closes the connection on a client certificate it does not),
    or one that does not name the host we asked for."""
    return any(sign in details for sign in ("handshake", "certificate", "Socket closed",
                                             "SSL", "TSI_", "Verification Check"))


def ipam() -> Service:
    # Imported here so that commands which never talk to IPAM do not pay for it.
    from calico.ipam.v1 import ipam_pb2_grpc
    return Service("IPAM service", config.IPAM_ADDR, ipam_pb2_grpc.IpamServiceStub)


def endpoint() -> Service:
    """This node's endpoint service."""
    from calico.endpoint.v1 import endpoint_pb2_grpc
    return Service("endpoint service", config.ENDPOINT_ADDR,
                   endpoint_pb2_grpc.EndpointServiceStub, addr=config.endpoint_addr(),
                   hint="It runs on every node ('make up' starts one for this host).")


def bgp() -> Service:
    from calico.bgp.v1 import bgp_pb2_grpc
    return Service("BGP service", config.BGP_ADDR, bgp_pb2_grpc.BgpServiceStub)


def policy() -> Service:
    from calico.policy.v1 import policy_pb2_grpc
    return Service("policy service", config.POLICY_ADDR, policy_pb2_grpc.PolicyServiceStub)


def call(service: Service, method: str, request):
    """A call whose failure is simply the service's message (exit 1)."""
    try:
        return service.call(method, request)
    except RpcFailure as exc:
        raise CliError(str(exc)) from None
