"""IPAM's domain errors; each derives from the shared class that fixes its status code."""

from calicopy.errors import (AlreadyExists, DeadlineExceeded, FailedPrecondition,
                             InvalidArgument, NotFound, ResourceExhausted)
from calicopy.model.ipam import InvalidInput  # noqa: F401 (IPAM raises it too)


class PoolNotFound(NotFound):
    def __init__(self, cidr):
        super().__init__(f"{cidr} is not a configured pool.")


class PoolExists(AlreadyExists):
    def __init__(self, cidr):
        super().__init__(f"Pool {cidr} already exists.")


class PoolConflict(FailedPrecondition):
    """Overlapping pools, a pool still in use, an incompatible change."""


class NoPool(FailedPrecondition):
    """No enabled pool of the wanted family to allocate from."""


class AddressTaken(AlreadyExists):
    def __init__(self, ip, pool):
        super().__init__(f"IP address {ip} is already assigned in pool {pool}.")


class AddressInUse(FailedPrecondition):
    """A release (by address, not by owner) of an address a live endpoint lists."""

    def __init__(self, ip, user):
        super().__init__(f"{ip} is in use by {user.describe()}; remove the workload first, "
                         f"or run 'calicoctl ipam release --ip={ip} --force' to free it "
                         "anyway.")
        self.ip, self.user = ip, user


class OutsidePools(InvalidArgument):
    def __init__(self, ip):
        super().__init__(f"{ip} is not in any configured pool.")


class PoolExhausted(ResourceExhausted):
    pass


class RequestConflict(AlreadyExists):
    """A request id used again for a request that asks for something else."""

    def __init__(self, request_id, handle_id, recorded, num_ipv4, num_ipv6):
        super().__init__(
            f"Request {request_id} of handle {handle_id} asked for {recorded.num_ipv4} IPv4 "
            f"and {recorded.num_ipv6} IPv6 address(es), not {num_ipv4} and {num_ipv6}: use "
            "a new request_id for a different request.")


class GaveUp(DeadlineExceeded):
    """The caller's deadline is too near to start a commit."""

    def __init__(self, handle_id):
        super().__init__(f"IPAM gave up on handle {handle_id}: the caller's deadline left no "
                         "time to commit; nothing was allocated by this call. Retry the "
                         "request (with the same request_id it gets what was allocated).")
