"""IPAM's domain errors; each derives from the shared class that fixes its status code."""

from calicopy.errors import (AlreadyExists, FailedPrecondition, InvalidArgument,
                             NotFound, ResourceExhausted)
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


class OutsidePools(InvalidArgument):
    def __init__(self, ip):
        super().__init__(f"{ip} is not in any configured pool.")


class PoolExhausted(ResourceExhausted):
    pass
