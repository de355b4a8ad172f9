"""`make base-image`, `make compose-up` / `make compose-down`: the docker-compose stack.

Which Docker engine: DOCKER_HOST when it is set; else the system's engine
(/var/run/docker.sock) when it answers; else a private engine that
`compose-up` starts and `compose-down` stops (``PrivateEngine("compose")``,
see tools/compose_engine.py; export the DOCKER_HOST it prints to use it by
hand). Tests always use a private engine of their own.

Which base image: BASE_IMAGE when it is set; else python:3.11-slim when the
engine has it; else the Debian 12 image made with debootstrap
(tools/base_image.py), which already holds every Debian package the
Dockerfile needs, so that the build fetches only the Python wheels; those are
downloaded on this host into ``WHEELS`` first, with its pip settings.

This module owns the compose project (``Stack``: build, up, down, exec) and
the command line below; it pulls no image from a registry.

Usage: python3 -m tools.compose base-image|up|down|purge
Standard library only: it runs before (and without) the project's venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools import base_image, dockerd
from tools.compose_engine import DATA_ROOT, PrivateEngine

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_SOCKET = "/var/run/docker.sock"
PROJECT = "calico-py"                  # as in .env, which docker-compose reads
NODES = ("node1", "node2")
READY = "/run/calico-node.ready"      # see docker/calico-node

SLIM = "python:3.11-slim"
IMAGE = "calico-py/calico:dev"        # as in docker-compose.yml


class ComposeError(RuntimeError):
    pass


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
            self.compose_cmd = [dockerd.docker_cli(), "compose"]
        self.compose_cmd += ["--project-directory", str(ROOT),
                             "-f", str(ROOT / "docker-compose.yml")]

    def docker(self, *args: str, check: bool = True, input: bytes | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
        return _run([dockerd.docker_cli(), *args], self.env, check, input, timeout)

    def compose(self, *args: str, check: bool = True, timeout: float = 900,
                capture: bool = True) -> subprocess.CompletedProcess:
        return _run([*self.compose_cmd, *args], self.env, check, None, timeout, capture)

    def exec(self, service: str, *argv: str, check: bool = True, timeout: float = 60,
             quick: bool = False) -> subprocess.CompletedProcess:
        """``docker-compose exec -T <service> argv...``; text output. With
        ``quick``, the same through ``docker exec`` (no compose start-up: ~50 ms
        instead of ~800 ms), for polling."""
        if quick:
            argv_ = [dockerd.docker_cli(), "exec", self.container(service), *argv]
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

    def choose_base(self) -> str:
        if os.environ.get("BASE_IMAGE"):
            return os.environ["BASE_IMAGE"]
        if self.image_label(SLIM, base_image.BASE_LABEL) is not None:
            return SLIM
        return base_image.ensure(self)

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
        make_certificates()
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


# Certificates ---------------------------------------------------------------

PKI = ROOT / "build" / "pki"          # mounted at /etc/calico-py/pki (docker-compose.yml)


def make_certificates() -> None:
    """The stack's CA and certificates (made once, kept): each service's for
    its replicas' names on the stack's network, the nodes', and the operator's."""
    from calicopy import pki           # the venv's: compose-up runs with it
    hosts = {"service:etcd": ["etcd"], "service:ipam": ["ipam", "ipam2"],
             "service:policy": ["policy", "policy2"], "service:bgp": ["bgp", "bgp2"],
             "admin": []}
    hosts.update({f"node:{node}": [node] for node in NODES})
    pki.ensure(PKI, hosts)


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


# make targets -------------------------------------------------------------

def _engine() -> tuple[str, PrivateEngine | None]:
    """(DOCKER_HOST, the private engine if that is what it is)."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"], None
    if dockerd.ping(SYSTEM_SOCKET):
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
        print(next(p for p in __doc__.split("\n\n") if p.startswith("Usage:")),
              file=sys.stderr)
        return 2
    try:
        if command == "down":
            private = PrivateEngine("compose")
            host = os.environ.get("DOCKER_HOST") or (
                f"unix://{SYSTEM_SOCKET}" if dockerd.ping(SYSTEM_SOCKET) else
                private.url if private.running() else "")
            if host:
                Stack(host).down()
            if not os.environ.get("DOCKER_HOST") and private.pid:
                private.stop()
                print(f"Stopped the private Docker engine ({private.url}); its images stay "
                      f"cached in {private.data_root} (`python3 -m tools.compose purge`).")
            return 0
        if command == "purge":
            for folder in DATA_ROOT.glob("*"):
                PrivateEngine(folder.name).purge()
            base_image.purge()
            shutil.rmtree(WHEELS, ignore_errors=True)
            WHEELS.with_suffix(".stamp").unlink(missing_ok=True)
            print(f"Removed {DATA_ROOT}, {base_image.CACHE} and {WHEELS}")
            return 0
        host, private = _engine()
        stack = Stack(host)
        if command == "base-image":
            print(f"{base_image.ensure(stack)} is ready on {host}")
            return 0
        stack.up()
        print(f"\nThe stack is up on {host}. Try:")
        if private is not None:
            print(f"  export DOCKER_HOST={host}")
        for args in ("status", "shownodes"):
            print(f"  docker-compose exec node1 calicoctl {args}")
        return 0
    except (ComposeError, dockerd.DockerdError, base_image.BaseImageError,
            subprocess.TimeoutExpired) as exc:
        print(f"make compose-{command} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
