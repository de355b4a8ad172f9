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


#: The tools whose runs the agent measures (calico_policy_restore_seconds).
MEASURED = {"iptables-restore", "ip6tables-restore", "ipset"}


def measured(run):
    """``run``, with each restore's duration and failures counted by tool
    (iptables-legacy-restore counts as iptables-restore; of ipset, only
    ``ipset restore``)."""
    from calicopy import metrics

    def tool(argv) -> str | None:
        name = argv[0].replace("-legacy", "").replace("-nft", "")
        if name == "ipset":
            return "ipset" if "restore" in argv[1:2] else None
        return name if name in MEASURED else None

    def timed(argv, *args, **kwargs):
        name = tool(argv)
        if name is None:
            return run(argv, *args, **kwargs)
        try:
            with metrics.POLICY_RESTORE_SECONDS.time(tool=name):
                return run(argv, *args, **kwargs)
        except CommandError:
            metrics.POLICY_RESTORE_FAILURES.inc(tool=name)
            raise
    return timed
