"""Running calicoctl as a user would, and checking what it did (tests of every level).

``ok`` and ``fails`` take a CompletedProcess with text output (from
``calicoctl()`` here, the ``calicoctl`` fixture, or ``Host.calicoctl`` of the
lab). A failure is exit code 1 and one message on stderr, no traceback.
``tables`` reads the tables a command printed, ``document`` its ``-o json``
output, so that a test can check that both say the same.
"""

from __future__ import annotations

import json
import os
import re
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


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every table in ``text``, in order: its rows, each keyed by header."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("+-") and i + 2 < len(lines) and lines[i + 2].startswith("+-"):
            headers = _cells(lines[i + 1])
            rows, i = [], i + 3
            while not lines[i].startswith("+-"):
                rows.append(dict(zip(headers, _cells(lines[i]))))
                i += 1
            found.append(rows)
        i += 1
    return found


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip()[1:-1].split("|")]


SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
FREE_FORM = {"attributes"}          # maps whose keys are the user's data


def document(result: subprocess.CompletedProcess, kind: str, exit_code: int = 0) -> dict:
    """The JSON document of a ``-o json`` run, checked: the exit code, nothing
    on stderr unless it failed (then one line), its kind and version, and
    snake_case keys all through."""
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr == "" if exit_code == 0 else result.stderr.count("\n") == 1, \
        result.stderr
    doc = json.loads(result.stdout)
    assert list(doc)[:2] == ["kind", "version"] and (doc["kind"], doc["version"]) == (kind, 1)
    _check_keys(doc)
    return doc


def _check_keys(value) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert SNAKE.match(key), f"key {key!r} is not snake_case"
            if key not in FREE_FORM:
                _check_keys(item)
    elif isinstance(value, list):
        for item in value:
            _check_keys(item)
