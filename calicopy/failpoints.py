"""Named points where a test can freeze a process to kill it mid-operation.

``CALICO_FAILPOINTS`` lists the names (comma-separated) at which the process
stops and waits forever, as if it had hung there; the crash tests then kill
it and check what a restart makes of the half-done work. Unset (always, in
production) a failpoint costs one set lookup.

The failpoints, and the crash test of each (tests/system/test_*crash*.py):

- ``endpoint-add-after-claim``, ``endpoint-add-after-kernel``: the endpoint
  service's add, after claiming addresses and after plumbing the kernel;
- ``policy-before-restore``, ``policy-after-restore``: the policy agent's
  pass, before writing iptables and ipsets and after (progress not recorded);
- ``renderer-before-configure``, ``renderer-after-configure``: the BIRD
  renderer, with a new configuration in place, before and after telling BIRD;
- ``docker-ipam-after-claim``: the Docker IPAM driver, between claiming an
  address and answering Docker; ``docker-create-endpoint``: the network
  driver's CreateEndpoint, after the endpoint was made, before answering.
"""

from __future__ import annotations

import logging
import os
import threading

_ACTIVE = frozenset(filter(None, os.environ.get("CALICO_FAILPOINTS", "").split(",")))


def reached(name: str) -> None:
    if name in _ACTIVE:
        logging.getLogger(__name__).warning("failpoint %s reached: waiting to be killed", name)
        threading.Event().wait()
