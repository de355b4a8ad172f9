"""`make base-image`, `make compose-up` / `make compose-down`: the docker-compose stack.

Which Docker engine: DOCKER_HOST when it is set; else the system's engine
(/var/run/docker.sock) when it answers; else a private engine that
`compose-up` starts and `compose-down` stops (``PrivateEngine("compose")``;
export the DOCKER_HOST it prints to use it by hand). Tests always use a
private engine of their own.

A private engine runs in the root network namespace, so that image builds
(`build.network: host` in docker-compose.yml) reach the Debian mirrors and
PyPI, and in a private mount namespace (its own /etc/docker, plugin folder and
/run/containerd). It leaves the host's dataplane alone (no docker0, iptables,
NAT or forwarding changes): the stack's own bridge network only joins its
containers, which is all the stack needs. Its data-root is kept on disk under
``DATA_ROOT/<name>``, so images stay cached between runs (`purge` deletes
them). Its dockerd is stopped by the PID it wrote, after checking that the
process is that engine.

Which base image: BASE_IMAGE when it is set; else python:3.11-slim when the
engine has it; else ``BASE_TAG``, a Debian 12 root filesystem made with
debootstrap that already holds every Debian package the Dockerfile needs, so
the build fetches only the Python wheels. The root filesystem is kept as a
tarball under ``CACHE`` (keyed by the package list): debootstrap runs once per
machine, later imports take seconds.

Usage: python3 -m tools.compose base-image|up|down|purge
Standard library only: it runs before (and without) the project's venv.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools import processes

ROOT = Path(__file__).resolve().parent.parent
RUN_ROOT = Path("/run/calico-py/compose")           # sockets, pids (short paths)
DATA_ROOT = Path(os.environ.get("CALICO_PY_DOCKER_DATA", "/var/lib/calico-py/compose"))
CACHE = Path(os.environ.get("CALICO_PY_CACHE", "/var/cache/calico-py"))
SYSTEM_SOCKET = "/var/run/docker.sock"
PROJECT = "calico-py"                  # as in .env, which docker-compose reads
NODES = ("node1", "node2")
READY = "/run/calico-node.ready"      # see docker/calico-node

SLIM = "python:3.11-slim"
BASE_TAG = "calico-py/debian:bookworm"
IMAGE = "calico-py/calico:dev"        # as in docker-compose.yml
SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the Dockerfile would otherwise install (python3-venv: pip for the venv).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "etcd-server", "bird2",
                 "iproute2", "iputils-ping", "iptables", "ipset")
BASE_KEY = hashlib.sha256(" ".join((SUITE,) + BASE_PACKAGES).encode()).hexdigest()[:12]
BASE_LABEL = "calico-py.base"


class ComposeError(RuntimeError):
    pass


def _docker_cli() -> str:
    # Debian's client first: it matches Debian's engine.
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"


def ping(sock: str) -> bool:
    """Whether an engine answers ``GET /_ping`` on this unix socket."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(sock)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        return b" 200 " in reply.split(b"\r\n")[0]
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# A private engine ---------------------------------------------------------

# Runs in the new mount namespace, then becomes dockerd.
# $1: /etc/docker stand-in, $2: plugin folder, $3: /run/containerd stand-in.
_ENTER = """set -e
mkdir -p /etc/docker /run/docker/plugins /run/containerd
mount --bind "$1" /etc/docker
mount --bind "$2" /run/docker/plugins
mount --bind "$3" /run/containerd
shift 3
exec "$@"
"""


class PrivateEngine:
    """A dockerd of our own: socket, pid and exec-root under ``RUN_ROOT/<name>``,
    data-root (the image cache) under ``DATA_ROOT/<name>``, containers under
    the cgroup parent ``calico-py-compose-<name>``, log in ``RUN_ROOT/<name>.log``.
    ``start()`` returns once the API answers; ``stop()`` stops it by PID and
    removes whatever it left in the run folder; both are idempotent."""

    def __init__(self, name: str):
        self.name = name
        self.dir = RUN_ROOT / name
        self.sock = self.dir / "docker.sock"
        self.pidfile = self.dir / "docker.pid"
        self.log = RUN_ROOT / f"{name}.log"
        self.data_root = DATA_ROOT / name
        self.cgroup_parent = f"calico-py-compose-{name}"

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def pid(self) -> int | None:
        """The running dockerd's PID, only if that process is this engine."""
        try:
            pid = int(self.pidfile.read_text())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if self.url.encode() in argv else None

    def running(self) -> bool:
        return self.pid() is not None and ping(str(self.sock))

    def start(self, timeout: float = 60.0) -> None:
        if self.running():
            return
        self.stop()                         # whatever a killed run left
        for folder in ("etc", "plugins", "containerd", "exec"):
            (self.dir / folder).mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        dockerd = [
            "/usr/sbin/dockerd", "--host", self.url, "--pidfile", str(self.pidfile),
            "--data-root", str(self.data_root), "--exec-root", str(self.dir / "exec"),
            "--cgroup-parent", self.cgroup_parent,
            # Hands off the host's dataplane: no docker0, NAT, forwarding or proxy.
            "--bridge", "none", "--iptables=false", "--ip6tables=false",
            "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
            "--shutdown-timeout", "5", "--log-level", "warn"]
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "sh",
                str(self.dir / "etc"), str(self.dir / "plugins"), str(self.dir / "containerd"),
                *dockerd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"   # its own runc, containerd, docker-init
        with open(self.log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while not ping(str(self.sock)):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ComposeError(f"private Docker engine {self.name} did not start; "
                                   f"see {self.log}:\n{_tail(self.log)}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        pid = self.pid()
        cgroups = processes.cgroup_dirs(pid or "self", self.cgroup_parent)
        if pid:
            processes.stop(pid, timeout)
        # A dockerd killed without its clean-up leaves containerd, shims and
        # container processes: found by the folder they name, and by cgroup.
        for other in _processes_naming(str(self.dir) + "/"):
            processes.kill(other)
        processes.remove_cgroups(cgroups)
        shutil.rmtree(self.dir, ignore_errors=True)

    def clear(self) -> None:
        """Remove every container and network (not the images), so that
        stopping leaves no bridge behind in the root network namespace."""
        if not self.running():
            return
        env = {**os.environ, "DOCKER_HOST": self.url}
        ids = subprocess.run([_docker_cli(), "ps", "-aq"], capture_output=True, text=True,
                             env=env, timeout=60).stdout.split()
        if ids:
            subprocess.run([_docker_cli(), "rm", "-f", *ids], capture_output=True, env=env,
                           timeout=120)
        subprocess.run([_docker_cli(), "network", "prune", "-f"], capture_output=True, env=env,
                       timeout=60)

    @contextlib.contextmanager
    def exclusive(self, timeout: float = 900.0):
        """Hold this engine for one user at a time (a file lock): two test runs
        on one machine take turns instead of sharing and stopping it."""
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        with open(RUN_ROOT / f"{self.name}.lock", "w") as f:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ComposeError(f"private Docker engine {self.name} is still in use "
                                           f"after {timeout:.0f}s") from None
                    time.sleep(1)
            yield self

    def purge(self) -> None:
        """Stop, and delete the cached images and containers."""
        self.stop()
        shutil.rmtree(self.data_root, ignore_errors=True)


def _processes_naming(prefix: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(a.removeprefix("unix://").startswith(prefix) for a in argv.split("\0")):
            found.append(int(entry))
    return found


class Stack:
    """The compose project ``project`` (default: COMPOSE_PROJECT_NAME, else
    ``PROJECT``) on the engine at ``docker_host``."""

    def __init__(self, docker_host: str, project: str = ""):
        project = project or os.environ.get("COMPOSE_PROJECT_NAME") or PROJECT
        self.docker_host, self.project = docker_host, project
        self._containers: dict[str, str] = {}        # service -> container id
        self.env = {**os.environ, "DOCKER_HOST": docker_host,
                    "COMPOSE_PROJECT_NAME": project}
        # Classic builder, the same for both compose tools (BuildKit needs buildx
        # for `docker compose`, which Debian does not package).
        self.env.update(DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0")
        if shutil.which("docker-compose"):
            self.compose_cmd = ["docker-compose"]
        else:
            self.compose_cmd = [_docker_cli(), "compose"]
        self.compose_cmd += ["--project-directory", str(ROOT),
                             "-f", str(ROOT / "docker-compose.yml")]

    def docker(self, *args: str, check: bool = True, input: bytes | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
        return _run([_docker_cli(), *args], self.env, check, input, timeout)

    def compose(self, *args: str, check: bool = True, timeout: float = 900,
                capture: bool = True) -> subprocess.CompletedProcess:
        return _run([*self.compose_cmd, *args], self.env, check, None, timeout, capture)

    def exec(self, service: str, *argv: str, check: bool = True, timeout: float = 60,
             quick: bool = False) -> subprocess.CompletedProcess:
        """``docker-compose exec -T <service> argv...``; text output. With
        ``quick``, the same through ``docker exec`` (no compose start-up: ~50 ms
        instead of ~800 ms), for polling."""
        if quick:
            argv_ = [_docker_cli(), "exec", self.container(service), *argv]
        else:
            argv_ = [*self.compose_cmd, "exec", "-T", service, *argv]
        result = subprocess.run(argv_, capture_output=True, text=True, env=self.env,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise ComposeError(f"{service}: {' '.join(argv)} exited with {result.returncode}:"
                               f"\n{result.stdout}{result.stderr}")
        return result

    def image_label(self, image: str, label: str) -> str | None:
        """The image's label, "" without it, None without the image."""
        result = self.docker("image", "inspect", "-f", "{{json .Config.Labels}}", image,
                             check=False)
        if result.returncode != 0:
            return None
        return (json.loads(result.stdout or "null") or {}).get(label, "")

    def base_image(self) -> str:
        """``BASE_TAG`` in this engine, made (or imported from the cache) if needed."""
        if self.image_label(BASE_TAG, BASE_LABEL) == BASE_KEY:
            return BASE_TAG
        tarball = base_tarball()
        print(f"Importing {tarball} as {BASE_TAG}")
        with open(tarball, "rb") as f:
            _run([_docker_cli(), "import", "--change", f"LABEL {BASE_LABEL}={BASE_KEY}",
                  "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["bash"]',
                  "-", BASE_TAG], self.env, True, f, 300)
        return BASE_TAG

    def choose_base(self) -> str:
        if os.environ.get("BASE_IMAGE"):
            return os.environ["BASE_IMAGE"]
        if self.image_label(SLIM, BASE_LABEL) is not None:
            return SLIM
        return self.base_image()

    def container(self, service: str) -> str:
        """The id of the service's container ("" if it has none)."""
        cid = self._containers.get(service)
        if not cid:
            cid = self.compose("ps", "-q", service).stdout.strip()
            if cid:
                self._containers[service] = cid
        return cid

    def up(self, timeout: float = 120.0) -> None:
        """Build, start, and return once both nodes run."""
        base = self.choose_base()
        print(f"Building the calico-py image on {base}")
        self.env["BASE_IMAGE"] = base
        download_wheels()
        before = self.docker("images", "-q", IMAGE, check=False).stdout.strip()
        self.compose("build", capture=False)
        after = self.docker("images", "-q", IMAGE, check=False).stdout.strip()
        if before and before != after:      # only the image this build replaced
            self.docker("rmi", before, check=False)
        self._containers.clear()
        self.compose("up", "-d", "--no-build", "--remove-orphans", capture=False)
        deadline = time.monotonic() + timeout
        waiting = list(NODES)
        while waiting:
            node = waiting[0]
            cid = self.container(node)
            running = cid and self.docker("inspect", "-f", "{{.State.Running}}", cid,
                                          check=False).stdout.strip() == "true"
            if not running or time.monotonic() > deadline:
                logs = self.compose("logs", "--no-color", "--tail=30", node, check=False)
                why = "exited" if not running else f"not ready after {timeout:.0f}s"
                raise ComposeError(f"{node} {why}:\n{logs.stdout}{logs.stderr}")
            if self.exec(node, "test", "-e", READY, check=False, quick=True).returncode == 0:
                waiting.pop(0)
            else:
                time.sleep(0.5)

    def down(self) -> None:
        self._containers.clear()
        self.compose("down", "--remove-orphans", "--volumes", "--timeout", "30",
                     capture=False)


def _run(argv: list[str], env: dict, check: bool, input, timeout: float,
         capture: bool = True) -> subprocess.CompletedProcess:
    kwargs = {"stdin": input} if hasattr(input, "read") else {"input": input}
    result = subprocess.run(argv, env=env, timeout=timeout,
                            capture_output=capture, **kwargs)
    if check and result.returncode != 0:
        out = b"" if not capture else (result.stdout or b"") + (result.stderr or b"")
        raise ComposeError(f"{' '.join(argv)} exited with {result.returncode}\n"
                           + out.decode(errors="replace"))
    if capture:
        result.stdout = result.stdout.decode(errors="replace")
        result.stderr = result.stderr.decode(errors="replace")
    return result


# The Python dependencies --------------------------------------------------

WHEELS = ROOT / "build" / "wheels"      # in the build context; see the Dockerfile


def requirements() -> list[str]:
    """What the image's venv holds (the Dockerfile reads the same list)."""
    import tomllib
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    tools = [d for d in project["optional-dependencies"]["dev"] if d.startswith("grpcio-tools")]
    return project["dependencies"] + tools + ["setuptools>=68"]


def download_wheels() -> None:
    """The image's Python dependencies as wheels in ``WHEELS``, fetched on this
    host with its pip settings (index, proxy, CA, local wheel folders), which
    a build step does not have. Wheels already there are not fetched again."""
    wanted = "\n".join(requirements()) + "\n"
    stamp = WHEELS.with_suffix(".stamp")        # what the last complete download was for
    if stamp.exists() and stamp.read_text() == wanted:
        return
    WHEELS.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
            "-d", str(WHEELS), *requirements()]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise ComposeError(f"pip download exited with {result.returncode}:\n{result.stderr}")
    stamp.write_text(wanted)


# The debootstrap base -----------------------------------------------------

def base_tarball() -> Path:
    """The base root filesystem's tarball in ``CACHE``, made with debootstrap
    if it is not there yet (about 80 s and 60 MB of packages)."""
    tarball = CACHE / f"debian-{SUITE}-{BASE_KEY}.tar"
    if tarball.exists():
        return tarball
    if not shutil.which("debootstrap"):
        raise ComposeError("debootstrap is not installed (make deps installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=CACHE))
    log = CACHE / "debootstrap.log"
    try:
        rootfs = work / "root"
        print(f"Making a Debian {SUITE} root filesystem with debootstrap from {MIRROR} "
              f"(log: {log})")
        with open(log, "wb") as out:
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 SUITE, str(rootfs), MIRROR], stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise ComposeError(f"debootstrap exited with {result.returncode}; see {log}:\n"
                               + _tail(log))
        # What an image does not need: downloaded packages, package lists (the
        # Dockerfile updates them if it ever installs anything), documentation.
        for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                        "var/lib/apt/lists/*_*", "usr/share/doc/*", "usr/share/man/*",
                        "usr/share/locale/*", "var/log/*.log", "var/log/apt/*"):
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        for name in ("etc/hostname", "etc/resolv.conf"):      # the engine provides them
            (rootfs / name).unlink(missing_ok=True)
        partial = work / "base.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
                       check=True)
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


# make targets -------------------------------------------------------------

def _engine() -> tuple[str, PrivateEngine | None]:
    """(DOCKER_HOST, the private engine if that is what it is)."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"], None
    if ping(SYSTEM_SOCKET):
        return f"unix://{SYSTEM_SOCKET}", None
    engine = PrivateEngine("compose")
    if not engine.running():
        print(f"No Docker engine at DOCKER_HOST or {SYSTEM_SOCKET}: starting a private one "
              f"({engine.url}; images cached in {engine.data_root})")
        engine.start()
    return engine.url, engine


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) == 2 else ""
    if command not in ("base-image", "up", "down", "purge"):
        print(__doc__.split("\n\n")[-2], file=sys.stderr)
        return 2
    try:
        if command == "down":
            private = PrivateEngine("compose")
            host = os.environ.get("DOCKER_HOST") or (
                f"unix://{SYSTEM_SOCKET}" if ping(SYSTEM_SOCKET) else
                private.url if private.running() else "")
            if host:
                Stack(host).down()
            if not os.environ.get("DOCKER_HOST") and private.pid():
                private.stop()
                print(f"Stopped the private Docker engine ({private.url}); its images stay "
                      f"cached in {private.data_root} (`python3 -m tools.compose purge`).")
            return 0
        if command == "purge":
            for folder in DATA_ROOT.glob("*"):
                PrivateEngine(folder.name).purge()
            shutil.rmtree(CACHE, ignore_errors=True)
            shutil.rmtree(WHEELS, ignore_errors=True)
            WHEELS.with_suffix(".stamp").unlink(missing_ok=True)
            print(f"Removed {DATA_ROOT}, {CACHE} and {WHEELS}")
            return 0
        host, private = _engine()
        stack = Stack(host)
        if command == "base-image":
            print(f"{stack.base_image()} is ready on {host}")
            return 0
        stack.up()
        print(f"\nThe stack is up on {host}. Try:")
        if private is not None:
            print(f"  export DOCKER_HOST={host}")
        for args in ("status", "shownodes"):
            print(f"  docker-compose exec node1 calicoctl {args}")
        return 0
    except (ComposeError, subprocess.TimeoutExpired) as exc:
        print(f"make compose-{command} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
