"""A real Docker engine (Debian's dockerd 20.10) inside one simulated host of the lab.

A configuration of ``tools.dockerd.Dockerd`` (which owns the private mount
namespace, the bind mounts over /etc/docker, /run/docker/plugins and
/run/containerd, starting, stopping and cleaning up): each lab engine runs in
its host's network namespace, and a tmpfs mounted in its mount namespace holds
data-root, exec-root and /run/containerd: overlay2 works on tmpfs whatever
the disk's filesystem is (overlayfs cannot stack on overlayfs), and every
file and mount of the engine vanishes with the namespace. Its only image is
``IMAGE``, busybox imported from the host; it reaches no registry.

Engines leave iptables, sysctls and bridges alone: the calico node owns the
host's dataplane. Containers get cgroups under a parent named after the
engine (``CGROUP_PREFIX<name>``).

Invariant: what an engine creates is under ``RUN_ROOT/<name>``, under its
cgroup parent, or inside its mount namespace. ``close()`` removes all of it;
``remove_leftovers(prefix)`` does the same for the engines of a killed run.
Processes are only ever signalled when their command line names our folder
or they sit in our cgroup.
"""

from __future__ import annotations

import functools
import io
import subprocess
import tarfile
from pathlib import Path

from tools import dockerd
from tools.dockerd import DockerError  # noqa: F401 (Host.docker raises it)

BUSYBOX = "/bin/busybox"
IMAGE = "calico-py/busybox:latest"
RUN_ROOT = Path("/run/calico-py/docker")
CGROUP_PREFIX = "calico-py-"
# A proxy on a closed loopback port: pulling an image not imported here fails
# at once, and no registry request leaves the host.
_NO_REGISTRY = "http://127.0.0.1:9"
_NO_REGISTRY_ENV = {**{k: _NO_REGISTRY for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                                 "https_proxy")},
                    "NO_PROXY": "", "no_proxy": ""}
# The engine's resolv.conf names a closed loopback port: before pulling an
# image it does not have, dockerd resolves the registry's name, and the
# machine's nameserver is not reachable from the lab (a 10 s timeout).
_RESOLV_CONF = "nameserver 127.0.0.1\n"


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


class Engine(dockerd.Dockerd):
    """One dockerd (and the containerd it starts) for one lab host.

    Started by the constructor, which returns once the API answers ``/_ping``
    and, with ``image``, once ``IMAGE`` is imported. If starting fails, what
    was started is removed before the error propagates.
    """

    def __init__(self, name: str, netns: str, log: Path, image: bool = True,
                 timeout: float = 30.0):
        folder = RUN_ROOT / name
        tmpfs = folder / "tmpfs"
        super().__init__(name, folder, log, data_root=tmpfs / "data",
                         exec_root=tmpfs / "exec", containerd=tmpfs / "containerd",
                         cgroup_parent=f"{CGROUP_PREFIX}{name}", tmpfs=tmpfs, netns=netns,
                         storage_driver=storage_driver(), resolv_conf=_RESOLV_CONF,
                         env=_NO_REGISTRY_ENV, shutdown_timeout=2)
        try:
            self.start(timeout)
            if image:
                self.import_image()
        except BaseException:
            self.close()
            raise

    def import_image(self) -> None:
        """``IMAGE`` from ``image_tarball()``, with ``sh`` as its command."""
        argv = [dockerd.docker_cli(), "-H", self.url, "import", "--change", 'CMD ["sh"]', "-",
                IMAGE]
        result = subprocess.run(argv, input=image_tarball(), capture_output=True,
                                timeout=60, env=self.client_env)
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

    def close(self) -> None:
        """Remove the containers, stop dockerd by its PID (containerd follows
        it), then kill whatever of ours is left and delete our folder.
        Safe to call twice, and after any failure."""
        self.remove_containers()
        self.stop(timeout=15)


def remove_leftovers(prefix: str) -> None:
    """Stop and remove the engines of labs with this fixed prefix that a killed
    run left behind: found by folder, and by processes naming such a folder."""
    names = {p.name for p in RUN_ROOT.glob(f"{prefix}-*")}
    names |= {name for _, _, name in dockerd.processes_under(RUN_ROOT)
              if name.startswith(f"{prefix}-")}
    for name in names:
        dockerd.remove(RUN_ROOT / name, f"{CGROUP_PREFIX}{name}")
