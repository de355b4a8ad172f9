"""Running calicoctl as a user would, and checking what it did (tests of every level).

``ok`` and ``fails`` take a CompletedProcess with text output (from
``calicoctl()`` here, the ``calicoctl`` fixture, or ``Host.calicoctl`` of the
lab). A failure is exit code 1 and one message on stderr, no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def calicoctl(*args: str, env: dict[str, str] | None = None,
              input: str | None = None) -> subprocess.CompletedProcess:
    """``calicoctl args...`` from this checkout, with ``env`` added to ours."""
    return subprocess.run([sys.executable, "-m", "cli.calicoctl", *args], input=input,
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, **(env or {})})


def ok(result: subprocess.CompletedProcess) -> str:
    """Assert success; returns stdout."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess, message: str) -> subprocess.CompletedProcess:
    """Assert exit code 1 with ``message`` as all of stderr, and no traceback."""
    assert result.returncode == 1, result
    assert result.stderr.strip() == message, result.stderr
    assert "Traceback" not in result.stderr
    return result
