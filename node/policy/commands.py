"""Running the iptables and ipset tools, with errors that carry their evidence."""

from __future__ import annotations

import subprocess

from calicopy.errors import CalicoError


class CommandError(CalicoError):
    """A command failed: holds argv, exit code, stdout, stderr (and the input)."""

    def __init__(self, argv, code, stdout, stderr, stdin=""):
        super().__init__(f"{' '.join(argv)} exited {code}: {(stderr or stdout).strip()[-800:]}")
        self.argv, self.code, self.stdout, self.stderr, self.stdin = \
            argv, code, stdout, stderr, stdin


def run(argv: list[str], stdin: str = "", check: bool = True, timeout: float = 60,
        raw: bool = False):
    """The command's output; with ``raw``, its exit code instead."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, f"timeout after {timeout:g}s", exc.stdout or "",
                           exc.stderr or "", stdin) from None
    if raw:
        return done.returncode
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stdout, done.stderr, stdin)
    return done.stdout
