"""What <CONTAINER> means on the command line.

``netns:<name|path>`` is a network namespace (a name under /var/run/netns or
a path), ``pid:<N>`` the namespace of a running process: orchestrator
``netns``, and the workload id is that same text (a namespace path under
/var/run/netns is shortened to its name).

Anything else is a Docker container's name or id, looked up in the engine at
DOCKER_HOST: orchestrator ``docker``, workload id the full container id (the
key `calicoctl container add` and the CALICO_IP proxy use), namespace that of
its process. A container on Calico Docker networks also has the endpoints the
network driver made, keyed by each network's Docker endpoint id
(``NetworkSettings.Networks[<net>].EndpointID``); ``endpoints()`` finds both.

Services name a workload by its id; ``Workload.say`` puts back the name the
user wrote, so that messages read as in the original tool.
"""

from __future__ import annotations

import dataclasses
import os

from calico.endpoint.v1 import endpoint_pb2
from calicopy.errors import CalicoError, NotFound, Unavailable
from cli.errors import CliError

NETNS_DIR = "/var/run/netns/"
ORCHESTRATOR = "netns"
DOCKER = "docker"


@dataclasses.dataclass
class Workload:
    orchestrator: str
    workload_id: str
    netns_path: str = ""
    pid: int = 0
    name: str = ""                  # as the user wrote it
    running: bool = True
    docker_endpoint_ids: list[str] = dataclasses.field(default_factory=list)

    @property
    def is_docker(self) -> bool:
        return self.orchestrator == DOCKER

    def say(self, message: str) -> str:
        """A service's message about this workload, naming it as the user did."""
        ids = [self.workload_id] + self.docker_endpoint_ids
        for wid in ids if self.name else []:
            message = message.replace(wid, self.name)
        return message


def identify(text: str) -> Workload:
    """The workload's identity; a netns or pid is not checked to exist."""
    if text.startswith("netns:") and len(text) > len("netns:"):
        target = text[len("netns:"):]
        if target.startswith(NETNS_DIR):
            target = target[len(NETNS_DIR):]
        path = target if target.startswith("/") else NETNS_DIR + target
        return Workload(ORCHESTRATOR, f"netns:{target}", netns_path=path, name=text)
    if text.startswith("pid:") and text[len("pid:"):].isdigit():
        pid = int(text[len("pid:"):])
        return Workload(ORCHESTRATOR, f"pid:{pid}", pid=pid, name=text)
    return _docker(text)


def _docker(text: str) -> Workload:
    from calicopy.docker_engine import Engine
    engine = Engine()
    try:
        with engine.inspecting(f"container named {text}") as docker:
            info = docker.containers.get(text).attrs
    except NotFound:
        raise CliError(f"Container {text} not found.") from None
    except Unavailable:
        raise CliError(f"Container {text} not found: it is not netns:<name|path> or pid:<N>, "
                       f"and no Docker engine answers at {engine.socket_path} "
                       "(DOCKER_HOST).") from None
    except CalicoError as exc:
        raise CliError(str(exc)) from None
    state = info.get("State") or {}
    running = bool(state.get("Running") and state.get("Pid"))
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    return Workload(DOCKER, info["Id"], pid=int(state["Pid"]) if running else 0, name=text,
                    running=running,
                    docker_endpoint_ids=[n["EndpointID"] for n in networks.values()
                                         if n and n.get("EndpointID")])


def find(text: str) -> Workload:
    """The workload, which must exist."""
    workload = identify(text)
    # lexists: a path we may not follow (another user's /proc/<pid>/ns/net)
    # is there; the service says why it cannot be used.
    if workload.netns_path and not os.path.lexists(workload.netns_path):
        raise CliError(f"Container {text} not found.")
    return workload


def endpoints(workload: Workload, service) -> tuple[list, list]:
    """(the endpoints keyed by the workload's id, those Docker's network
    driver made for its networks) on this node."""
    from cli import client

    def of(wid):
        return list(client.call(service, "ListEndpoints", endpoint_pb2.ListEndpointsRequest(
            orchestrator=workload.orchestrator, workload_id=wid)).endpoints)
    return of(workload.workload_id), [ep for eid in workload.docker_endpoint_ids
                                      for ep in of(eid)]
