"""The layout of one node's state folder: every file and socket a node keeps.

``<state dir>/<node>/`` (``CALICO_STATE_DIR``, default /var/run/calico-py)
holds the node's sockets, pids, generated configuration, status and logs. No
other module spells these names; the node's processes, calicoctl, the CNI
plugin and the test lab all ask a ``NodePaths``::

    <state dir>/<node>/
        node.pid              the supervisor's pid
        status.json           what the supervisor runs (calicoctl status)
        supervisor.log        the supervisor's own log
        <child>.log           one log per process it runs (policy.log, ...)
        endpoint.sock         the endpoint service (gRPC)
        endpoint.json.sock    the same RPCs as JSON over HTTP/1.1 (CNI plugin)
        endpoint.cni.sock     the CNI plugin's commands, forwarded by its process (cni.thin)
        bird.conf, bird.ctl, bird.pid    BIRD's configuration, control socket, pid
        quarantine-<process>.json   the malformed records a process skips (calicopy.quarantine)
        ready-<process>       a process can serve (written once it can: calicoctl node waits)
"""

from __future__ import annotations

from pathlib import Path

ENDPOINT_SOCKET = "endpoint.sock"
JSON_SUFFIX = ".json.sock"
CNI_SUFFIX = ".cni.sock"


class NodePaths:
    def __init__(self, state_dir: str | Path, name: str):
        self.state_dir = Path(state_dir)
        self.name = name
        self.dir = self.state_dir / name

    def log(self, process: str) -> Path:
        """The log file of one of the node's processes (``policy`` -> policy.log)."""
        return self.dir / f"{process}.log"

    def quarantine(self, process: str) -> Path:
        """The list of malformed records ``process`` skips (calicopy.quarantine)."""
        return self.dir / f"quarantine-{process}.json"

    def ready(self, process: str) -> Path:
        """Written by ``process`` once it can serve (the Docker plugin and proxy:
        once they have reached the endpoint service); removed when it stops."""
        return self.dir / f"ready-{process}"

    @property
    def pid(self) -> Path:
        return self.dir / "node.pid"

    @property
    def status(self) -> Path:
        return self.dir / "status.json"

    @property
    def supervisor_log(self) -> Path:
        return self.log("supervisor")

    @property
    def endpoint_socket(self) -> Path:
        return self.dir / ENDPOINT_SOCKET

    @property
    def endpoint_addr(self) -> str:
        """The endpoint service's gRPC address, ``unix:<path>``."""
        return f"unix:{self.endpoint_socket}"

    @property
    def bird_conf(self) -> Path:
        return self.dir / "bird.conf"

    @property
    def bird_ctl(self) -> Path:
        return self.dir / "bird.ctl"

    @property
    def bird_pid(self) -> Path:
        return self.dir / "bird.pid"


def json_socket(grpc_socket: str) -> str:
    """The JSON twin of an endpoint service's gRPC socket path: next to it,
    ``.sock`` becoming ``.json.sock`` (endpoint.sock -> endpoint.json.sock)."""
    return grpc_socket.removesuffix(".sock") + JSON_SUFFIX


def cni_socket(grpc_socket: str) -> str:
    """The CNI twin of an endpoint service's gRPC socket path, next to it
    (endpoint.sock -> endpoint.cni.sock): services/endpoint/cni_server.py."""
    return grpc_socket.removesuffix(".sock") + CNI_SUFFIX
