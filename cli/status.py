"""Whether this host's node runs, and its BGP sessions.

Usage:
  calicoctl status [--name=<NAME>] [-o <FORMAT>]

Options:
  --name=<NAME>   The node (default: CALICO_NODENAME, else the hostname).
  -o <FORMAT>     Output format: table (the default) or json (its shape is in
                  docs/cli-json.md).

Prints the node's processes (from its supervisor), the malformed records
they skip (treated as absent; `calicoctl check` lists every one in the
cluster), and the BGP sessions as BIRD reports them, for IPv4 and IPv6, with
BIRD's last error for a session that is not established (why it is not up).
Exits 1 when the node is not running (saying only that), and when BIRD does
not answer (after printing the rest).
"""

from __future__ import annotations

import json

from calicopy import config, quarantine
from cli import node, output
from cli.errors import CliError
from cli.output import table


def run(args: dict) -> None:
    name = config.NODENAME.resolve(args["--name"])
    paths = config.node_paths(name)
    pid = node.supervisor_pid(name)
    if not pid:
        raise CliError(f"calico-node is not running on this host (node {name}).")
    try:
        status = json.loads(paths.status.read_text())
    except (OSError, ValueError):
        status = {"children": {}}
    doc = {"node": name, "supervisor_pid": pid,
           "processes": [{"name": name_, "state": c["state"], "pid": c["pid"] or None,
                          "restarts": c["restarts"]} for name_, c in status["children"].items()],
           "skipped_records": [{"process": process, "key": key, "problem": why}
                               for process, found in quarantine.reports(paths).items()
                               for key, why in sorted(found.items())],
           "bgp_sessions": None}
    from node.bird import ctl
    failure = None
    try:
        sessions = ctl.sessions(str(paths.bird_ctl)) if paths.bird_ctl.exists() else None
    except ctl.BirdError as exc:
        sessions, failure = None, f"BIRD did not answer: {exc}"
    if sessions is None:
        failure = failure or "BIRD is not running yet."
    else:
        doc["bgp_sessions"] = [
            {"ip_version": s.ip_version, "peer_address": s.peer, "peer_type": s.peer_type,
             "state": s.state, "since": s.since, "info": s.info, "last_error": s.last_error}
            for v in (4, 6) for s in sessions if s.ip_version == v]
    output.emit(args, "NodeStatus", doc, _render)
    if failure:
        raise CliError(failure)


def _render(doc: dict) -> str:
    lines = [f"calico-node {doc['node']} is running (supervisor pid {doc['supervisor_pid']}).",
             table(["Process", "State", "PID", "Restarts"],
                   [[p["name"], p["state"], p["pid"] or "-", p["restarts"]]
                    for p in doc["processes"]])]
    if doc["skipped_records"]:
        lines.append("Malformed records skipped (treated as absent; see `calicoctl check`)")
        lines.append(table(["Process", "Key", "What is wrong"],
                           [[r["process"], r["key"], r["problem"]]
                            for r in doc["skipped_records"]]))
    for v in (4, 6) if doc["bgp_sessions"] is not None else ():
        rows = [[s["peer_address"], s["peer_type"], s["state"], s["since"], s["info"],
                 s["last_error"]] for s in doc["bgp_sessions"] if s["ip_version"] == v]
        lines.append(f"IPv{v} BGP status")
        lines.append(table(["Peer address", "Peer type", "State", "Since", "Info",
                            "Last error"], rows) if rows else f"No IPv{v} peers found.")
    return "\n".join(lines)
