"""Move the Docker engine to an alternative socket, so that the Calico Docker
proxy serves the usual one (and back).

Usage:
  calicoctl restart-docker-with-alternative-unix-socket [--restart-command=<CMD>]
            [--daemon-config=<FILE>] [--unit-dir=<DIR>] [--wait=<SECONDS>]
  calicoctl restart-docker-without-alternative-unix-socket [--restart-command=<CMD>]
            [--daemon-config=<FILE>] [--unit-dir=<DIR>] [--wait=<SECONDS>]

Options:
  --restart-command=<CMD>  For an engine not run by systemd: the shell command
                           that restarts it. calicoctl first sets the socket
                           in the engine's configuration file (its "hosts",
                           see --daemon-config), so the engine must not be
                           given -H/--host on its command line.
  --daemon-config=<FILE>   The engine's configuration file (only with a
                           restart command) [default: /etc/docker/daemon.json].
  --unit-dir=<DIR>         Where systemd drop-ins are written
                           [default: /etc/systemd/system].
  --wait=<SECONDS>         How long to wait for the engine to answer on its
                           new socket [default: 30].

The usual socket is DOCKER_HOST's (default /var/run/docker.sock); the
alternative one has the same name with ".real" (/var/run/docker.real.sock).

Without --restart-command the engine is run by systemd, as Debian's docker.io
is (dockerd -H fd://, its socket from docker.socket): a drop-in for
docker.socket (<unit dir>/docker.socket.d/calico-py.conf) moves its socket,
then systemd reloads and restarts docker.socket and docker.service. The
"without" command removes the drop-in and restarts them the same way.

Restarting the engine stops its containers, unless they have a restart policy
or the engine runs with live-restore. While the engine is on the alternative
socket, the Calico node (`calicoctl node`) runs the proxy on the usual one:
`docker run -e CALICO_IP=<IP|auto> [-e CALICO_PROFILE=<PROFILE>] ...` then
gives the container a Calico address. Each step is printed as it is done.
Both commands must run as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from calicopy import config
from calicopy.docker_engine import Engine, real_socket
from cli import validate
from cli.errors import CliError

DROP_IN = "docker.socket.d/calico-py.conf"
PROXY_WAIT = 5.0        # how long to look for the node's proxy afterwards


def run(args: dict) -> None:
    validate.root()
    proxied = args["restart-docker-with-alternative-unix-socket"]
    try:
        wait = config.parse_seconds(args["--wait"])
    except ValueError:
        raise CliError(f"Invalid --wait '{args['--wait']}': give a number of seconds.") from None
    public = config.DOCKER_HOST.resolve()
    real = real_socket(public)
    target = real if proxied else public
    if args["--restart-command"]:
        method = DaemonConfig(Path(args["--daemon-config"]), args["--restart-command"])
    else:
        method = Systemd(Path(args["--unit-dir"]))

    leaving = None if proxied else real
    changed = method.configure(public, real, proxied)
    if changed is None and _engine_on(target, leaving):
        print(f"The Docker engine already listens on {target}; nothing changed.")
        return
    print(changed or f"{method.where} already says {target}; restarting the engine.")
    method.restart()
    deadline = time.monotonic() + wait
    while not _engine_on(target, leaving):
        if time.monotonic() > deadline:
            raise CliError(f"The Docker engine did not answer on {target} within {wait:g}s "
                           f"after the restart; {method.logs_hint}")
        time.sleep(0.2)
    print(f"The Docker engine answers on {target}.")
    if proxied:
        deadline = time.monotonic() + PROXY_WAIT
        while not _answers(public) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"The Calico Docker proxy serves {public}." if _answers(public) else
              f"Nothing serves {public} yet: the Calico node runs the proxy there "
              "(if the node runs, restart it: 'calicoctl node stop', then 'calicoctl node').")
    elif os.path.exists(real):
        os.unlink(real)
        print(f"Removed {real}, which nothing serves any more.")


def _answers(path: str) -> bool:
    return Engine(path, timeout=2).available()


def _engine_on(target: str, leaving: str | None) -> bool:
    """Whether the engine answers on ``target`` (and, moving back, no longer
    on ``leaving``: until then the proxy may be answering for it)."""
    return _answers(target) and not (leaving and _answers(leaving))


def _run(argv: list[str], shell: bool = False) -> None:
    shown = argv[0] if shell else " ".join(argv)
    try:
        result = subprocess.run(argv[0] if shell else argv, shell=shell, capture_output=True,
                                text=True, timeout=120)
    except FileNotFoundError:
        raise CliError(f"Cannot run '{shown}': {argv[0]} is not installed.") from None
    except subprocess.TimeoutExpired:
        raise CliError(f"'{shown}' did not finish within 120s.") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise CliError(f"'{shown}' failed with exit code {result.returncode}"
                       + (f": {detail[-1]}" if detail else "."))
    print(f"Ran: {shown}")


class Systemd:
    """docker.socket's listening socket, moved by a drop-in."""

    logs_hint = "see 'systemctl status docker.socket docker.service' and 'journalctl -u docker'."

    def __init__(self, unit_dir: Path):
        self.drop_in = unit_dir / DROP_IN
        self.where = str(self.drop_in)

    def configure(self, public: str, real: str, proxied: bool) -> str | None:
        """Write or remove the drop-in; what was done, or None if nothing."""
        shown = _run_quiet(["systemctl", "show", "--property=ExecStart", "docker.service"])
        if "fd://" not in shown:
            raise CliError("docker.service does not take its socket from docker.socket (no "
                           "'-H fd://' in its ExecStart), so a drop-in cannot move it; give "
                           "--restart-command for an engine that reads its socket from "
                           "daemon.json.")
        text = ("# Written by calicoctl restart-docker-with-alternative-unix-socket: the\n"
                f"# engine listens on {real}; the Calico Docker proxy serves {public}.\n"
                f"[Socket]\nListenStream=\nListenStream={real}\n")
        if proxied:
            if self.drop_in.exists() and self.drop_in.read_text() == text:
                return None
            self.drop_in.parent.mkdir(parents=True, exist_ok=True)
            self.drop_in.write_text(text)
            return f"Wrote {self.drop_in}: docker.socket listens on {real}."
        if not self.drop_in.exists():
            return None
        self.drop_in.unlink()
        return f"Removed {self.drop_in}: docker.socket listens on {public} again."

    def restart(self) -> None:
        _run(["systemctl", "daemon-reload"])
        # The socket unit can only be restarted while its service is stopped.
        _run(["systemctl", "stop", "docker.service", "docker.socket"])
        _run(["systemctl", "start", "docker.socket", "docker.service"])


def _run_quiet(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise CliError(f"{argv[0]} is not installed: without systemd, give "
                       "--restart-command (see --help).") from None
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[0]
        raise CliError(f"'{' '.join(argv)}' failed: {detail} Without systemd, give "
                       "--restart-command (see --help).")
    return result.stdout


class DaemonConfig:
    """The engine's "hosts" in its daemon.json, and a command that restarts it."""

    logs_hint = "see the engine's log."

    def __init__(self, path: Path, command: str):
        self.path, self.command = path, command
        self.where = str(path)

    def configure(self, public: str, real: str, proxied: bool) -> str | None:
        try:
            doc = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError) as exc:
            raise CliError(f"Cannot read {self.path}: {exc}") from None
        if not isinstance(doc, dict):
            raise CliError(f"{self.path} is not a JSON object.")
        old = doc.get("hosts")
        if old is not None and not (isinstance(old, list) and all(isinstance(h, str)
                                                                  for h in old)):
            raise CliError(f"{self.path}: \"hosts\" is not a list of addresses.")
        gone, now = (public, real) if proxied else (real, public)
        wanted = f"unix://{now}"
        hosts = [h for h in (old or []) if _unix_path(h) not in (gone, now)]
        hosts.insert(0, wanted)
        if hosts == old:
            return None
        doc["hosts"] = hosts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".calico-py.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, self.path)
        return (f"Wrote {self.path}: \"hosts\" is now {json.dumps(hosts)} "
                f"(was {json.dumps(old) if old is not None else 'not set'}).")

    def restart(self) -> None:
        _run([self.command], shell=True)


def _unix_path(host: str) -> str | None:
    try:
        return config.parse_unix_socket(host) if host.startswith("unix:") else None
    except ValueError:
        return None
