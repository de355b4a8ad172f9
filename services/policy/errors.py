"""The policy service's domain errors."""

from calicopy.errors import AlreadyExists, FailedPrecondition, NotFound
from calicopy.model.policy import BadRule  # noqa: F401 (the policy service raises it too)


class ProfileNotFound(NotFound):
    def __init__(self, name):
        super().__init__(f"Couldn't find profile with name {name}")


class ProfileExists(AlreadyExists):
    def __init__(self, name):
        super().__init__(f"Profile {name} already exists.")


class ProfileInUse(FailedPrecondition):
    pass


class EndpointNotFound(NotFound):
    pass
