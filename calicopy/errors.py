"""Domain errors shared by all services.

Each class corresponds to one gRPC status code; the mapping lives in
``calicopy.rpc`` so that domain modules never import grpc. Services subclass
these for their own, more specific errors.
"""


class CalicoError(Exception):
    """Base of every error a caller is meant to see. The message is the
    sentence shown to the person: say what was wrong and what to do."""


class InvalidArgument(CalicoError):
    """The request itself is malformed."""


class NotFound(CalicoError):
    """A named object does not exist."""


class AlreadyExists(CalicoError):
    """The object to create, or the address to claim, exists already."""


class FailedPrecondition(CalicoError):
    """The request is well formed but conflicts with the current state."""


class ResourceExhausted(CalicoError):
    """There is nothing left to allocate."""


class Aborted(CalicoError):
    """A compare-and-swap kept losing races; the caller may retry."""


class Unavailable(CalicoError):
    """A dependency (etcd) cannot be reached."""


class DeadlineExceeded(CalicoError):
    """The caller's deadline passed (or was too near to finish) before the
    work was done; nothing was committed. The same request may be retried."""


class PermissionDenied(CalicoError):
    """The caller's identity may not make this call."""


class Unauthenticated(CalicoError):
    """The caller presented no identity the server trusts."""
