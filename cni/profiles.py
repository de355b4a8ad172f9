"""What the ``calico`` plugin remembers between invocations: profiles it has
seen confirmed by the policy service, so that an ADD need not ask again.

An ADD makes sure its profiles exist (``CreateProfile``; ``ALREADY_EXISTS``
is fine) before the endpoint refers to them. That call is gRPC, and
importing grpc costs more than the rest of an ADD, so the answer is
remembered: a file per profile, ``<node dir>/cni-profiles/<profile>``
(next to the endpoint service's sockets; ``/var/run`` is emptied at boot),
holding the policy service's address, whose modification time is when that
service last said the profile exists. An ADD asks again when that was more
than ``FRESH`` seconds ago, or before the endpoint service started (its JSON
socket is newer: a node restarted, perhaps over a reset datastore), or the
address differs.

Why this is safe:

- A mark is written only after the policy service answered that the profile
  exists (created, or already there); never before, never on a failure.
- Concurrent ADDs of a new network may all ask (one creates the profile,
  the others get ``ALREADY_EXISTS``) and all write the same file; one that
  reads it half written takes it for unconfirmed and asks too.
- A stale mark (the profile deleted since it was confirmed; the policy
  service refuses to delete a profile endpoints use, unless forced) fails
  closed: for at most ``FRESH`` seconds, new workloads refer to a profile that
  does not exist, which allows them nothing (the agent's chains skip it and
  drop what no profile allowed); the first ADD after that creates
  the profile again with the default rules, as before this cache, and the
  policy agents then program every endpoint that refers to it.
- A mark that cannot be read or written costs only the call it would have
  saved.
"""

from __future__ import annotations

import os
import time

FRESH = 300.0           # seconds a confirmation is trusted
FOLDER = "cni-profiles"


def _plain(name: str) -> bool:
    """A name the policy service could accept (letters, digits, '_'), and so
    a safe file name; others are never remembered."""
    return 0 < len(name) <= 64 and name.isascii() and name.replace("_", "a").isalnum()


class Confirmed:
    """The profiles confirmed for the services of one invocation."""

    def __init__(self, services, now=time.time):
        self.socket = services.endpoint_json
        self.folder = os.path.join(os.path.dirname(self.socket), FOLDER)
        self.policy_addr = services.policy_addr
        self._now = now

    def recent(self, profile: str) -> bool:
        """Whether this policy service said ``profile`` exists less than
        ``FRESH`` seconds ago, and since the endpoint service started."""
        if not _plain(profile):
            return False
        path = os.path.join(self.folder, profile)
        try:
            with open(path) as f:
                said_by = f.read()
            said_at = os.stat(path).st_mtime
            started = os.stat(self.socket).st_mtime
        except OSError:
            return False
        return said_by == self.policy_addr and said_at >= started and \
            0 <= self._now() - said_at < FRESH

    def remember(self, profile: str) -> None:
        """The policy service has just said ``profile`` exists."""
        if not _plain(profile):
            return
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            path = os.path.join(self.folder, profile)
            with open(path, "w") as f:
                f.write(self.policy_addr)
            now = self._now()
            os.utime(path, (now, now))
        except OSError:
            pass
