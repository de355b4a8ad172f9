"""Whether this host's node runs, and its BGP sessions.

Usage:
  calicoctl status [--name=<NAME>]

Options:
  --name=<NAME>   The node (default: CALICO_NODENAME, else the hostname).

Prints the node's processes (from its supervisor), the malformed records
they skip (treated as absent; `calicoctl check` lists every one in the
cluster), and the BGP sessions as BIRD reports them, for IPv4 and IPv6, with
BIRD's last error for a session that is not established (why it is not up).
Exits 1 when the node is not running.
"""

from __future__ import annotations

import json

from calicopy import config, quarantine
from cli import node
from cli.errors import CliError
from cli.output import table


def run(args: dict) -> None:
    name = config.NODENAME.resolve(args["--name"])
    paths = config.node_paths(name)
    pid = node.supervisor_pid(name)
    if not pid:
        raise CliError(f"calico-node is not running on this host (node {name}).")
    print(f"calico-node {name} is running (supervisor pid {pid}).")
    try:
        status = json.loads(paths.status.read_text())
    except (OSError, ValueError):
        status = {"children": {}}
    print(table(["Process", "State", "PID", "Restarts"],
                [[name_, c["state"], c["pid"] or "-", c["restarts"]]
                 for name_, c in status["children"].items()]))
    skipped = [[process, key, why] for process, found in quarantine.reports(paths).items()
               for key, why in sorted(found.items())]
    if skipped:
        print("Malformed records skipped (treated as absent; see `calicoctl check`)")
        print(table(["Process", "Key", "What is wrong"], skipped))
    from node.bird import ctl
    try:
        sessions = ctl.sessions(str(paths.bird_ctl)) if paths.bird_ctl.exists() else None
    except ctl.BirdError as exc:
        raise CliError(f"BIRD did not answer: {exc}") from None
    if sessions is None:
        raise CliError("BIRD is not running yet.")
    for v in (4, 6):
        rows = [[s.peer, s.peer_type, s.state, s.since, s.info, s.last_error] for s in sessions
                if s.ip_version == v]
        print(f"IPv{v} BGP status")
        print(table(["Peer address", "Peer type", "State", "Since", "Info", "Last error"], rows)
              if rows else f"No IPv{v} peers found.")
