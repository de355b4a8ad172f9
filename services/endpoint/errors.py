"""The endpoint service's domain errors."""

from calicopy.errors import (AlreadyExists, CalicoError, FailedPrecondition,
                             InvalidArgument, NotFound)


class BadRequest(InvalidArgument):
    pass


class AlreadyNetworked(AlreadyExists):
    def __init__(self, workload):
        super().__init__(f"{workload} has already been configured with Calico Networking.")


class InterfaceInUse(AlreadyExists):
    def __init__(self, interface, workload):
        super().__init__(f"Interface {interface} already exists in {workload}.")


class NoEndpoints(NotFound):
    def __init__(self, workload):
        super().__init__(f"Container {workload} doesn't contain any endpoints.")


class EndpointNotFound(NotFound):
    pass


class NoIpv6(FailedPrecondition):
    def __init__(self):
        super().__init__("This node is not configured for IPv6.")


class DataplaneError(CalicoError):
    """The kernel refused a change; the message names the operation."""


class OrchestratorOwned(FailedPrecondition):
    def __init__(self, workload, orchestrator):
        super().__init__(f"The interface of {workload} is configured by {orchestrator}; "
                         f"change its addresses through {orchestrator}.")


class NotPreassigned(FailedPrecondition):
    def __init__(self, ip):
        super().__init__(f"{ip} is not assigned in IPAM; claim it before adding it as "
                         "pre-assigned.")
