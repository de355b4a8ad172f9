"""Talking to a running BIRD through its control socket: reload, check, read sessions."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

from calicopy.errors import CalicoError
from node.bird.conf import parse_protocol_name


# Debian puts BIRD in /usr/sbin, which is not on a non-root user's PATH.
BIRD = shutil.which("bird") or "/usr/sbin/bird"
BIRDC = shutil.which("birdc") or "/usr/sbin/birdc"


class BirdError(CalicoError):
    """A BIRD command failed; carries what it ran and what it said."""

    def __init__(self, argv, code, output):
        super().__init__(f"{' '.join(argv)} exited {code}: {output.strip()[-500:]}")
        self.argv, self.code, self.output = argv, code, output


def _run(argv: list[str], timeout: float = 10) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BirdError(argv, "timeout", str(exc.stdout or "")) from None
    if done.returncode != 0:
        raise BirdError(argv, done.returncode, done.stdout + done.stderr)
    return done.stdout


def check_config(path: str) -> None:
    """Raise BirdError unless BIRD accepts the configuration file."""
    _run([BIRD, "-p", "-c", path])


def configure(ctl: str, path: str) -> None:
    out = _run([BIRDC, "-s", ctl, "configure", f'"{path}"'])
    if not any(ok in out for ok in ("Reconfigured", "Reconfiguration in progress",
                                     "queueing")):
        raise BirdError(["birdc", "configure"], 0, out)


@dataclasses.dataclass
class Session:
    peer: str
    peer_type: str
    state: str
    since: str
    info: str           # BIRD's BGP state: Established, Active, Connect, Idle...
    ip_version: int
    last_error: str = ""    # why it is not up, as BIRD says (empty once established)


def sessions(ctl: str) -> list[Session]:
    """The BGP protocols BIRD runs for calico peers, from `show protocols
    all`: a protocol's line, then its indented details (BGP state, last error)."""
    return parse_sessions(_run([BIRDC, "-s", ctl, "show", "protocols", "all"]))


def parse_sessions(out: str) -> list[Session]:
    found: list[Session] = []
    current: Session | None = None
    for line in out.splitlines():
        if line[:1].isspace():
            key, _, value = line.strip().partition(":")
            if current is not None and key == "BGP state":
                current.info = value.strip()
            elif current is not None and key == "Last error":
                current.last_error = value.strip()
            continue
        current = None
        parts = line.split()
        if len(parts) < 5 or parts[1] != "BGP":
            continue
        parsed = parse_protocol_name(parts[0])
        if parsed is None:
            continue
        kind, ip, version = parsed
        # Name Proto Table State Since [Since2] Info...; Since may be "date time".
        rest = parts[4:]
        since = " ".join(rest[:2]) if len(rest) > 1 and ":" in rest[1] else rest[0]
        info = (rest[len(since.split()):] or [""])[0]
        current = Session(ip, kind, parts[3], since, info, version)
        found.append(current)
    for session in found:
        if session.info == "Established":
            session.last_error = ""       # an old error no longer says anything
    return found
