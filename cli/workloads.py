"""What <CONTAINER> means on the command line.

``netns:<name|path>`` is a network namespace (a name under /var/run/netns or
a path), ``pid:<N>`` the namespace of a running process. The workload id the
services see is that same text (a namespace path under /var/run/netns is
shortened to its name), so messages name the workload as the user wrote it.
"""

from __future__ import annotations

import dataclasses
import os

from cli.errors import CliError

NETNS_DIR = "/var/run/netns/"
ORCHESTRATOR = "netns"


@dataclasses.dataclass
class Workload:
    orchestrator: str
    workload_id: str
    netns_path: str = ""
    pid: int = 0


def identify(text: str) -> Workload:
    """The workload's identity, without checking that it exists."""
    if text.startswith("netns:") and len(text) > len("netns:"):
        target = text[len("netns:"):]
        if target.startswith(NETNS_DIR):
            target = target[len(NETNS_DIR):]
        path = target if target.startswith("/") else NETNS_DIR + target
        return Workload(ORCHESTRATOR, f"netns:{target}", netns_path=path)
    if text.startswith("pid:") and text[len("pid:"):].isdigit():
        pid = int(text[len("pid:"):])
        return Workload(ORCHESTRATOR, f"pid:{pid}", pid=pid)
    raise CliError(f"Container {text} not found: name a network namespace as "
                   "netns:<name|path> or a process as pid:<N>.")


def find(text: str) -> Workload:
    """The workload, which must exist."""
    workload = identify(text)
    if workload.netns_path and not os.path.exists(workload.netns_path):
        raise CliError(f"Container {text} not found.")
    return workload
