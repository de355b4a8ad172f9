"""Talking to a running BIRD through its control socket: reload, check, read sessions.

Reading the sessions speaks BIRD's control protocol on the socket itself (no
birdc process: the renderer asks every couple of seconds). The protocol is
text, a line each way: BIRD greets with ``0001 BIRD <version> ready.``; each
reply line starts with a four-digit code and ``-`` (more follows) or a space
(the reply's last line), or with a space (continuing the previous code's
text). Codes from 8000 on are errors. ``query`` returns the text as birdc
prints it.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
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


def query(ctl: str, command: str, timeout: float = 10) -> str:
    """``command``'s reply over BIRD's control socket, as birdc prints it."""
    argv = ["bird-control", ctl, command]
    out: list[str] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(ctl)
            lines = sock.makefile("r", encoding="utf-8", errors="replace", newline="\n")
            greeting = lines.readline()
            if not greeting.startswith("0001 "):
                raise BirdError(argv, "no greeting", greeting)
            sock.sendall(command.encode() + b"\n")
            for line in lines:
                line = line.rstrip("\n")
                if line[:4].isdigit() and line[4:5] in ("-", " "):
                    if int(line[:4]) >= 8000:
                        raise BirdError(argv, line[:4], line[5:])
                    out.append(line[5:])
                    if line[4] == " ":
                        return "\n".join(out) + "\n"
                elif line.startswith(" "):
                    out.append(line[1:])
            raise BirdError(argv, "closed", "\n".join(out))
    except OSError as exc:
        raise BirdError(argv, type(exc).__name__, str(exc)) from None


def sessions(ctl: str) -> list[Session]:
    """The BGP protocols BIRD runs for calico peers, from `show protocols
    all`: a protocol's line, then its indented details (BGP state, last error)."""
    return parse_sessions(query(ctl, "show protocols all"))


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
