"""A real Docker engine (Debian's dockerd 20.10) inside one simulated host of the lab.

Each engine runs in its host's network namespace, entered with ``nsenter``
(``ip netns exec`` remounts /sys, and dockerd then finds no cgroups), and in a
private mount namespace of its own, in which:

- the engine's plugin folder is bind-mounted over /run/docker/plugins (a path
  dockerd hard-codes), so it discovers only its own host's plugin sockets;
- an empty folder is bind-mounted over /etc/docker, so no system daemon.json
  is read and dockerd's key.json is not written there;
- a tmpfs holds data-root, exec-root and /run/containerd (where containerd
  puts shim sockets whatever its state dir): overlay2 works on tmpfs
  whatever the disk's filesystem is (overlayfs cannot stack on overlayfs),
  and every file and mount of the engine vanishes with the namespace.

Engines leave iptables, sysctls and bridges alone: the calico node owns the
host's dataplane. Containers get cgroups under a parent named after the
engine, so that stray container processes can be found and the cgroups removed.

Invariant: what an engine creates is under ``RUN_ROOT/<name>`` (short paths:
unix sockets are limited to 108 bytes), under its cgroup parent, or inside its
mount namespace. ``close()`` removes all of it; ``remove_leftovers(prefix)``
does the same for the engines of a killed run. Processes are only ever
signalled when their command line names our folder or they sit in our cgroup.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

from tools import launch, processes

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"          # not /usr/local/bin/docker: another client
BUSYBOX = "/bin/busybox"
IMAGE = "calico-py/busybox:latest"
RUN_ROOT = Path("/run/calico-py/docker")
CGROUP_PREFIX = "calico-py-"
# dockerd's environment. PATH: the runc and containerd of its own package.
# A proxy on a closed loopback port: pulling an image not imported here fails
# at once, and no registry request leaves the host (see also _ENTER).
_NO_REGISTRY = "http://127.0.0.1:9"
_DOCKERD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                **{k: _NO_REGISTRY for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                             "https_proxy")},
                "NO_PROXY": "", "no_proxy": ""}

# Runs as root inside the new mount namespace, then becomes dockerd.
# $1: the engine's tmpfs mount point, $2: its plugin folder, $3: its /etc/docker.
# The engine's resolv.conf names a closed loopback port: before pulling an
# image it does not have, dockerd resolves the registry's name, and the
# machine's nameserver is not reachable from the lab (a 10 s timeout).
_ENTER = """set -e
mount -t tmpfs -o mode=0700 calico-py-docker "$1"
mkdir "$1/containerd"
mount --bind "$1/containerd" /run/containerd
mount --bind "$2" /run/docker/plugins
mount --bind "$3" /etc/docker
echo "nameserver 127.0.0.1" > "$1/resolv.conf"
if [ -e /etc/resolv.conf ]; then mount --bind "$1/resolv.conf" /etc/resolv.conf; fi
shift 3
exec "$@"
"""


class DockerError(subprocess.CalledProcessError):
    """A docker command failed; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited with {self.returncode}: " \
               f"{(self.stderr or '').strip()}"


def storage_driver() -> str:
    """overlay2 when the kernel has overlayfs (the data-root is a tmpfs, on
    which it always works), else vfs (full copies: slow, but works anywhere)."""
    with open("/proc/filesystems") as f:
        return "overlay2" if any(line.split()[-1] == "overlay" for line in f if line.strip()) \
            else "vfs"


@functools.cache
def image_tarball() -> bytes:
    """A root filesystem: static busybox and a symlink per applet, plus the
    few files programs look for. Built once per process, in memory."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700),
                             ("tmp", 0o1777), ("var", 0o755), ("var/www", 0o755)):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Engine:
    """One dockerd (and the containerd it starts) for one lab host.

    Started by the constructor, which returns once the API answers ``/_ping``
    and, with ``image``, once ``IMAGE`` is imported. If starting fails, what
    was started is removed before the error propagates.
    """

    def __init__(self, name: str, netns: str, log: Path, image: bool = True,
                 timeout: float = 30.0):
        self.name, self.netns, self.log = name, netns, log
        self.dir = RUN_ROOT / name
        self.sock = self.dir / "docker.sock"
        self.plugin_dir = self.dir / "plugins"
        self.pidfile = self.dir / "docker.pid"
        self.cgroup_parent = f"{CGROUP_PREFIX}{name}"
        self.proc: subprocess.Popen | None = None
        self.cgroups: list[Path] = []
        env = {k: v for k, v in os.environ.items()
               if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY",
                            "DOCKER_CERT_PATH")}
        # Our own client config: a user's ~/.docker (proxies, contexts) stays out.
        self._client_env = {**env, "DOCKER_CONFIG": str(self.dir / "client")}
        try:
            self._start(timeout)
            if image:
                self.import_image()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _start(self, timeout: float) -> None:
        if self.dir.exists():           # a killed run of a lab with the same prefix
            _remove_engine(self.dir)
        for folder in (self.plugin_dir, self.dir / "etc", self.dir / "tmpfs"):
            folder.mkdir(parents=True)
        # Mount points on the shared filesystem (the standard, empty folders
        # docker.io's own services would create); what we mount stays private.
        for point in ("/run/docker/plugins", "/run/containerd", "/etc/docker"):
            os.makedirs(point, exist_ok=True)
        tmpfs = self.dir / "tmpfs"
        dockerd = [
            DOCKERD, "--host", self.url, "--pidfile", str(self.pidfile),
            "--data-root", f"{tmpfs}/data", "--exec-root", f"{tmpfs}/exec",
            "--storage-driver", storage_driver(), "--cgroup-parent", self.cgroup_parent,
            # Hands off the host's dataplane: no docker0, NAT, forwarding or proxy.
            "--bridge", "none", "--iptables=false", "--ip6tables=false",
            "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
            "--shutdown-timeout", "2", "--log-level", "warn"]
        argv = ["nsenter", f"--net=/var/run/netns/{self.netns}",
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", _ENTER, "sh", str(tmpfs), str(self.plugin_dir),
                str(self.dir / "etc"), *dockerd]
        self.proc = launch.spawn(argv, self.log, env=_DOCKERD_ENV)
        launch.wait_until(f"dockerd of {self.name}", self.ping, self.proc, self.log,
                          timeout=timeout)
        self.cgroups = processes.cgroup_dirs(self.proc.pid, self.cgroup_parent)

    def ping(self) -> bool:
        """Whether the engine's API answers ``GET /_ping``."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.sock))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0]
        except OSError:
            return False

    def docker(self, *args: str, check: bool = True, timeout: float = 60,
               input: str | None = None) -> subprocess.CompletedProcess:
        """``docker -H <this engine> args...``; text output."""
        argv = [DOCKER, "-H", self.url, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                input=input, env=self._client_env)
        if check and result.returncode != 0:
            raise DockerError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def import_image(self) -> None:
        """``IMAGE`` from ``image_tarball()``, with ``sh`` as its command."""
        argv = [DOCKER, "-H", self.url, "import", "--change", 'CMD ["sh"]', "-", IMAGE]
        result = subprocess.run(argv, input=image_tarball(), capture_output=True,
                                timeout=60, env=self._client_env)
        if result.returncode != 0:
            raise DockerError(result.returncode, argv, result.stdout.decode(),
                              result.stderr.decode(errors="replace"))

    def container_pid(self, container: str) -> int:
        """The host PID of a running container's first process."""
        pid = int(self.docker("inspect", "-f", "{{.State.Pid}}", container).stdout)
        if pid <= 0:
            raise RuntimeError(f"container {container} on {self.name} is not running")
        return pid

    def container_netns(self, container: str) -> str:
        """A path to the container's network namespace, usable from outside
        (the engine's own netns files live in its private mount namespace)."""
        return f"/proc/{self.container_pid(container)}/ns/net"

    def remove_containers(self, timeout: float = 30) -> None:
        """``docker rm -f`` every container, quietly (used on the way out)."""
        if self.proc is None or self.proc.poll() is not None or not self.ping():
            return
        try:
            ids = self.docker("ps", "-aq", check=False, timeout=timeout).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Remove the containers, stop dockerd by its PID (containerd follows
        it), then kill whatever of ours is left and delete our folder.
        Safe to call twice, and after any failure."""
        self.remove_containers()
        if self.proc is not None and self.proc.returncode is None:
            launch.stop_pid(self.proc.pid, timeout=15)
            self.proc.wait()        # reaped: a second close() signals nobody
        _remove_engine(self.dir, self.cgroups)


def remove_leftovers(prefix: str) -> None:
    """Stop and remove the engines of labs with this fixed prefix that a killed
    run left behind: found by folder, and by processes naming such a folder."""
    names = {p.name for p in RUN_ROOT.glob(f"{prefix}-*")}
    names |= {name for _, _, name in _our_processes() if name.startswith(f"{prefix}-")}
    for name in names:
        _remove_engine(RUN_ROOT / name)


def _our_processes() -> list[tuple[int, list[str], str]]:
    """(pid, argv, engine name) of every process whose command line names a
    folder under RUN_ROOT: dockerd (--host, --data-root...), containerd
    (--config) and shims (-address)."""
    found = []
    root = f"{RUN_ROOT}/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        args = argv.split("\0")
        for arg in args:
            path = arg.removeprefix("unix://")
            if path.startswith(root):
                found.append((int(entry), args, path[len(root):].split("/")[0]))
                break
    return found


def _remove_engine(folder: Path, cgroups: list[Path] | None = None) -> None:
    """Everything engine ``folder.name`` may have left: container processes
    (found by cgroup), its dockerd (SIGTERM, so it tidies up), containerd and
    shims (SIGKILL), its cgroups and its folder."""
    name = folder.name
    procs = [(pid, argv) for pid, argv, n in _our_processes() if n == name]
    dockerds = [pid for pid, argv in procs if argv[0].endswith("dockerd")]
    if cgroups is None:
        try:
            cgroups = processes.cgroup_dirs(dockerds[0] if dockerds else "self",
                                   f"{CGROUP_PREFIX}{name}")
        except OSError:             # that dockerd just went
            cgroups = processes.cgroup_dirs("self", f"{CGROUP_PREFIX}{name}")
    processes.kill_cgroup_members(cgroups)   # else dockerd waits for them to stop
    for pid in dockerds:
        processes.stop(pid)
    for pid, argv in procs:
        if pid not in dockerds:
            processes.kill(pid)
    processes.remove_cgroups(cgroups)
    shutil.rmtree(folder, ignore_errors=True)
