"""A stand-in for a node process, forked by tests/unit/test_supervisor.py.

``main(argv)`` writes one line (its arguments, ZYGOTE_PROBE from its
environment, its name in ps) to stdout; on its first run (no marker file
yet) it then exits with a message as docopt does, on the next ones it runs
until a signal ends it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    marker = Path(argv[-1])
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    print(f"argv={argv[:-1]} probe={os.environ.get('ZYGOTE_PROBE')} comm={comm}", flush=True)
    if not marker.exists():
        marker.write_text("ran")
        sys.exit("Usage: first run fails")
    while True:
        signal.pause()
