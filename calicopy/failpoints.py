"""Named points where a test can freeze a process to kill it mid-operation.

``CALICO_FAILPOINTS`` lists the names (comma-separated) at which the process
stops and waits forever, as if it had hung there; the crash tests then kill
it and check what a restart makes of the half-done work. Unset (always, in
production) a failpoint costs one set lookup.
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
