"""The BGP service's domain errors."""

from calicopy.errors import FailedPrecondition, NotFound
from calicopy.model.bgp import BadInput  # noqa: F401 (the BGP service raises it too)


class NodeNotFound(NotFound):
    def __init__(self, name):
        super().__init__(f"Node {name} is not registered; start it with 'calicoctl node'.")


class PeerNotFound(NotFound):
    pass


class NodeInUse(FailedPrecondition):
    def __init__(self, name, count):
        super().__init__(f"Node {name} has {count} active endpoint(s) so can't be stopped. "
                         "Force with --force")
