"""The policy service's domain errors."""

from calicopy.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


class BadRule(InvalidArgument):
    """A profile name, tag or rule is malformed; the message says which and why."""


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
