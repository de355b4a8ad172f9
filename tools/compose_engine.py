"""The compose stack's private Docker engine, for machines with no engine of their own.

A configuration of ``tools.dockerd.Dockerd``. It runs in the root network
namespace, so that image builds (`build.network: host` in docker-compose.yml)
reach the Debian mirrors and PyPI, and in a private mount namespace (its own
/etc/docker, plugin folder and /run/containerd). Like every engine of ours it
leaves the host's dataplane alone (no docker0, iptables, NAT or forwarding
changes): the stack's own bridge network only joins its containers, which is
all the stack needs.

Invariants: socket, pid and exec-root are under ``RUN_ROOT/<name>``, the log
is ``RUN_ROOT/<name>.log``; the data-root is kept on disk under
``DATA_ROOT/<name>``, so images stay cached between runs (only ``purge()``
deletes it); containers are under the cgroup parent
``calico-py-compose-<name>``. The engine is stopped by the PID it wrote, after
checking that the process is that engine. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path

from tools import dockerd

RUN_ROOT = Path("/run/calico-py/compose")           # sockets, pids (short paths)
DATA_ROOT = Path(os.environ.get("CALICO_PY_DOCKER_DATA", "/var/lib/calico-py/compose"))


class PrivateEngine(dockerd.Dockerd):
    """A dockerd of our own (see the module). ``start()`` returns once the API
    answers, and does nothing when the engine already runs; ``stop()`` stops
    it by PID and removes whatever it left in the run folder; both are
    idempotent, and work from another process than the one that started it."""

    def __init__(self, name: str):
        folder = RUN_ROOT / name
        super().__init__(name, folder, RUN_ROOT / f"{name}.log", data_root=DATA_ROOT / name,
                         exec_root=folder / "exec", containerd=folder / "containerd",
                         cgroup_parent=f"calico-py-compose-{name}", shutdown_timeout=5)

    def start(self, timeout: float = 60.0) -> None:
        if not self.running():
            super().start(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        super().stop(timeout)

    def clear(self) -> None:
        """Remove every container and network (not the images), so that
        stopping leaves no bridge behind in the root network namespace."""
        if not self.running():
            return
        self.remove_containers(timeout=120)
        self.docker("network", "prune", "-f", check=False)

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
                        raise dockerd.DockerdError(
                            f"private Docker engine {self.name} is still in use after "
                            f"{timeout:.0f}s") from None
                    time.sleep(1)
            yield self

    def purge(self) -> None:
        """Stop, and delete the cached images and containers."""
        self.stop()
        shutil.rmtree(self.data_root, ignore_errors=True)
