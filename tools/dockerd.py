"""A private dockerd (Debian's 20.10): started, waited for, stopped, and cleaned up after.

The one engine helper behind the lab's per-host engines (``tools.docker_engine``)
and the compose stack's private engine (``tools.compose_engine``), which only
configure it. Standard library only: ``python3 -m tools.compose`` runs it under
the system Python, before (and without) the project's venv.

Each engine runs in a private mount namespace of its own (``unshare --mount``),
optionally in a given network namespace (``nsenter --net``), in which:

- an empty folder is bind-mounted over /etc/docker, so no system daemon.json
  is read and dockerd's key.json is not written there;
- the engine's plugin folder is bind-mounted over /run/docker/plugins (a path
  dockerd hard-codes), so it discovers only its own plugin sockets;
- a folder of its own is bind-mounted over /run/containerd (where containerd
  puts shim sockets whatever its state dir);
- optionally, a tmpfs is mounted (for a data-root that vanishes with the
  namespace) and a resolv.conf of its own replaces /etc/resolv.conf.

Engines leave the host's dataplane alone: no docker0 bridge, iptables, NAT,
forwarding or userland proxy. Containers get cgroups under a parent named
after the engine, so that stray container processes can be found and the
cgroups removed.

Invariants: what an engine creates is under its run folder (short paths: unix
sockets are limited to 108 bytes), its data-root, its cgroup parent, or inside
its mount namespace; ``stop()`` (and ``remove()`` for an engine a killed run
left) removes all of it but the data-root. Processes are only ever signalled
when their command line names the engine's folder (dockerd: its socket) or
they sit in its cgroup. Nothing is pulled from a registry here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tools import processes

DOCKERD = "/usr/sbin/dockerd"
# dockerd's PATH: the runc, containerd and docker-init of its own package.
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class DockerdError(RuntimeError):
    """An engine did not start (the message carries the end of its log), or
    could not be had."""


class DockerError(subprocess.CalledProcessError):
    """A docker command failed; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited with {self.returncode}: " \
               f"{(self.stderr or '').strip()}"


def docker_cli() -> str:
    """Debian's client, which matches Debian's engine (a /usr/local/bin/docker
    may be another one); else whichever is on PATH."""
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"


def ping(sock: str | Path) -> bool:
    """Whether an engine answers ``GET /_ping`` on this unix socket."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0]
    except OSError:
        return False


def processes_under(root: Path) -> list[tuple[int, list[str], str]]:
    """(pid, argv, entry) of every process with an argument (a path or a
    ``unix://`` URL) below ``root``; ``entry`` is the name of the folder
    directly under ``root`` it lies in. Of an engine: dockerd (--host,
    --pidfile...), containerd (--config), shims (-address), and the nsenter,
    unshare and sh that become dockerd."""
    found = []
    prefix = f"{root}/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        argv = args.split("\0")
        for arg in argv:
            path = arg.removeprefix("unix://")
            if path.startswith(prefix):
                found.append((int(entry), argv, path[len(prefix):].split("/")[0]))
                break
    return found


def _naming(folder: Path) -> list[tuple[int, list[str]]]:
    return [(pid, argv) for pid, argv, entry in processes_under(folder.parent)
            if entry == folder.name]


def remove(folder: Path, cgroup_parent: str, pid: int | None = None,
           cgroups: list[Path] | None = None, timeout: float = 10.0) -> None:
    """Stop and remove everything of the engine whose run folder is ``folder``
    (but its data-root), idempotently. ``pid``: its dockerd, known to be it;
    ``cgroups``: its cgroups, if known (else found from its dockerd's).

    In order: that dockerd gets SIGTERM (it stops its containers and its
    containerd); container processes left in the cgroups are killed (else a
    leftover dockerd waits for them); any other dockerd naming the folder (a
    killed run's) gets SIGTERM, so it tidies up; what else names the folder
    (containerd, shims) is killed; then the cgroups and the folder go."""
    if not cgroups:
        source = pid or next((p for p, argv in _naming(folder) if argv[0].endswith("dockerd")),
                             None)
        # "self" when none runs: dockerd's cgroups are under ours, where it started.
        cgroups = (processes.cgroup_dirs(source, cgroup_parent) if source else []) \
            or processes.cgroup_dirs("self", cgroup_parent)
    if pid:
        processes.stop(pid, timeout)
    processes.kill_cgroup_members(cgroups)
    for other, argv in _naming(folder):
        if argv[0].endswith("dockerd"):
            processes.stop(other, timeout)
    for other, _ in _naming(folder):         # looked up again: only the living
        processes.kill(other)
    processes.remove_cgroups(cgroups)
    shutil.rmtree(folder, ignore_errors=True)


class Dockerd:
    """One dockerd, configured by the caller: socket, pidfile, /etc/docker and
    plugin folder under the run folder ``folder``; data-root, exec-root and
    /run/containerd where given; cgroups under ``cgroup_parent``.

    ``tmpfs``: a folder on which a tmpfs is mounted inside the namespace
    (data-root, exec-root and containerd may lie in it). ``netns``: the name
    of the network namespace to run in (default: the caller's). ``resolv_conf``:
    the text of the engine's /etc/resolv.conf (default: the host's). ``env``:
    added to dockerd's environment (the caller's, without DOCKER_*).

    ``start()`` returns once the API answers; ``stop()`` stops dockerd by its
    PID (after checking the process is this engine) and removes what it left.
    """

    def __init__(self, name: str, folder: Path, log: Path, *, data_root: Path,
                 exec_root: Path, containerd: Path, cgroup_parent: str,
                 tmpfs: Path | None = None, netns: str | None = None,
                 storage_driver: str | None = None, resolv_conf: str | None = None,
                 env: dict[str, str] | None = None, shutdown_timeout: int = 5):
        self.name, self.dir, self.log = name, folder, log
        self.sock = folder / "docker.sock"
        self.pidfile = folder / "docker.pid"
        self.plugin_dir = folder / "plugins"
        self.data_root, self.exec_root, self.containerd = data_root, exec_root, containerd
        self.cgroup_parent, self.tmpfs, self.netns = cgroup_parent, tmpfs, netns
        self.storage_driver, self.resolv_conf = storage_driver, resolv_conf
        self.env, self.shutdown_timeout = env or {}, shutdown_timeout
        self.proc: subprocess.Popen | None = None      # when this object started it
        self.cgroups: list[Path] = []
        # Our own client config: a user's ~/.docker (proxies, contexts) stays out.
        self.client_env = {k: v for k, v in os.environ.items()
                           if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY",
                                        "DOCKER_CERT_PATH")}
        self.client_env["DOCKER_CONFIG"] = str(folder / "client")

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    @property
    def pid(self) -> int | None:
        """The running dockerd's PID, only if that process is this engine: the
        child we started, else the PID it wrote, and in both cases a process
        whose command line names our socket."""
        if self.proc is not None:
            pid = self.proc.pid if self.proc.poll() is None else None
        else:
            try:
                pid = int(self.pidfile.read_text())
            except (OSError, ValueError):
                pid = None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
        except OSError:
            return None
        return pid if self.url.encode() in argv else None

    def ping(self) -> bool:
        """Whether the engine's API answers ``GET /_ping``."""
        return ping(self.sock)

    def running(self) -> bool:
        return self.pid is not None and self.ping()

    def _enter_script(self) -> str:
        """Runs as root inside the new mount namespace, then becomes dockerd."""
        q = shlex.quote
        lines = ["set -e"]
        if self.tmpfs is not None:
            lines.append(f"mount -t tmpfs -o mode=0700 calico-py-docker {q(str(self.tmpfs))}")
        for source, target in ((self.dir / "etc", "/etc/docker"),
                               (self.plugin_dir, "/run/docker/plugins"),
                               (self.containerd, "/run/containerd")):
            lines.append(f"mkdir -p {q(str(source))}")
            lines.append(f"mount --bind {q(str(source))} {target}")
        if self.resolv_conf is not None:
            resolv = q(str(self.dir / "resolv.conf"))
            lines.append(f"if [ -e /etc/resolv.conf ]; then mount --bind {resolv} "
                         "/etc/resolv.conf; fi")
        lines.append('exec "$@"')
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> None:
        """Start dockerd, removing first whatever a killed run left under this
        folder; returns once the API answers. On failure, what was started is
        removed before the error propagates."""
        remove(self.dir, self.cgroup_parent)
        self.proc, self.cgroups = None, []
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.tmpfs is not None:
            self.tmpfs.mkdir(parents=True, exist_ok=True)
        if self.resolv_conf is not None:
            (self.dir / "resolv.conf").write_text(self.resolv_conf)
        # Mount points on the shared filesystem (the standard, empty folders
        # docker.io's own services would create); what we mount stays private.
        for point in ("/etc/docker", "/run/docker/plugins", "/run/containerd"):
            os.makedirs(point, exist_ok=True)
        dockerd = [
            DOCKERD, "--host", self.url, "--pidfile", str(self.pidfile),
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            *(["--storage-driver", self.storage_driver] if self.storage_driver else []),
            "--cgroup-parent", self.cgroup_parent,
            # Hands off the host's dataplane: no docker0, NAT, forwarding or proxy.
            "--bridge", "none", "--iptables=false", "--ip6tables=false",
            "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
            "--shutdown-timeout", str(self.shutdown_timeout), "--log-level", "warn"]
        # nsenter rather than `ip netns exec`, which remounts /sys: dockerd
        # would then find no cgroups.
        argv = [*(["nsenter", f"--net=/var/run/netns/{self.netns}"] if self.netns else []),
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", self._enter_script(), "sh", *dockerd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(PATH=PATH, **self.env)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log, "wb") as out:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             env=env)
            deadline = time.monotonic() + timeout
            while not self.ping():
                if self.proc.poll() is not None:
                    raise DockerdError(f"Docker engine {self.name} exited with "
                                       f"{self.proc.returncode}; see {self.log}:\n"
                                       + processes.tail(self.log))
                if time.monotonic() > deadline:
                    raise DockerdError(f"Docker engine {self.name} not ready after "
                                       f"{timeout:.0f}s; see {self.log}:\n"
                                       + processes.tail(self.log))
                time.sleep(0.1)
            self.cgroups = processes.cgroup_dirs(self.proc.pid, self.cgroup_parent)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dockerd by its PID (containerd follows it), then kill whatever
        of ours is left and delete the run folder (not the data-root).
        Idempotent, and safe after any failure."""
        remove(self.dir, self.cgroup_parent, self.pid, self.cgroups, timeout)
        if self.proc is not None and self.proc.poll() is None:
            # Our child, not reaped yet, so its PID is still ours to signal.
            processes.kill(self.proc.pid)
            self.proc.wait()

    def docker(self, *args: str, check: bool = True, timeout: float = 60,
               input: str | None = None) -> subprocess.CompletedProcess:
        """``docker -H <this engine> args...``; text output; raises DockerError
        (with stderr) on failure when ``check``."""
        argv = [docker_cli(), "-H", self.url, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                input=input, env=self.client_env)
        if check and result.returncode != 0:
            raise DockerError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def remove_containers(self, timeout: float = 30) -> None:
        """``docker rm -f`` every container, quietly (used on the way out)."""
        if not self.running():
            return
        try:
            ids = self.docker("ps", "-aq", check=False, timeout=timeout).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
