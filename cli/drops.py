"""`calicoctl policy drops`: the packets the nodes' policy denied lately (or
from now on, with --follow), with the rule that denied each.

Each node's agent keeps its last samples (node.policy.drops); this asks them
through etcd (cli.nodequery) and adds what only the cluster view knows: the
workloads at either end and the endpoint whose policy decided. The verdict
is in `policy explain`'s words, e.g. "denied by profile DB inbound rule 2:
deny [netns:db1]".
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import threading

from calicopy.model.policy import Snapshot
from cli import nodequery, output
from cli.errors import CliError

RULE = re.compile(r"denied by profile (\S+) (inbound|outbound) rule (\d+):")


def _when(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class Cluster:
    """Who is who, from the endpoint records: addresses and interfaces -> endpoints."""

    def __init__(self, snapshot: Snapshot):
        self.by_ip = {ip: ep for ep in snapshot.endpoints for ip in ep.ips}
        self.by_interface = {(ep.node, ep.host_interface): ep for ep in snapshot.endpoints}

    def end(self, ip: str, port) -> dict:
        ep = self.by_ip.get(ip)
        return {"ip": ip, "port": port, "workload_id": ep.workload_id if ep else None,
                "endpoint_id": ep.endpoint_id if ep else None}

    def entry(self, node: str, raw: dict) -> dict:
        """A node's sample as `policy drops -o json` gives it."""
        verdict = raw.get("verdict", "")
        inbound = "inbound" in verdict
        interface = raw.get("out_interface") if inbound else raw.get("in_interface")
        ep = self.by_interface.get((node, interface or ""))
        rule = RULE.match(verdict)
        return {"time": _when(raw["time"]), "node": node, "seq": raw["seq"],
                "ip_version": raw["version"], "protocol": raw["protocol"],
                "src": self.end(raw["src"], raw.get("src_port")),
                "dst": self.end(raw["dst"], raw.get("dst_port")),
                "icmp_type": raw.get("icmp_type"),
                "endpoint_id": ep.endpoint_id if ep else None,
                "workload_id": ep.workload_id if ep else None,
                "interface": interface or None,
                "profile": rule[1] if rule else None,
                "direction": rule[2] if rule else ("inbound" if inbound else "outbound"),
                "rule_number": int(rule[3]) if rule else None,
                "verdict": verdict}


def _concerns(entry: dict, endpoint: str | None) -> bool:
    if endpoint is None:
        return True
    return endpoint in (entry["endpoint_id"], entry["src"]["endpoint_id"],
                        entry["dst"]["endpoint_id"])


def _end_text(end: dict) -> str:
    text = end["ip"] if end["port"] is None else (
        f"[{end['ip']}]:{end['port']}" if ":" in end["ip"] else f"{end['ip']}:{end['port']}")
    return f"{text} ({end['workload_id']})" if end["workload_id"] else text


def line(entry: dict) -> str:
    """One drop as the table shows it."""
    what = entry["protocol"]
    if entry["icmp_type"] is not None:
        what += f" type {entry['icmp_type']}"
    who = f" [{entry['workload_id']}]" if entry["workload_id"] else ""
    return (f"{entry['time']} {entry['node']} {what} {_end_text(entry['src'])} -> "
            f"{_end_text(entry['dst'])}: {entry['verdict']}{who}")


def _entries(cluster: Cluster, answers: dict, endpoint: str | None) -> list[dict]:
    entries = [cluster.entry(node, raw) for node, answer in answers.items()
               for raw in answer.get("drops", [])]
    entries = [e for e in entries if _concerns(e, endpoint)]
    return sorted(entries, key=lambda e: (e["time"], e["node"], e["seq"]))


def run(args: dict, stop: threading.Event | None = None) -> None:
    with nodequery.etcd() as store:
        snapshot = nodequery.cluster(store)
        asked = nodequery.nodes(snapshot, args["--node"])
        endpoint = args["--endpoint"]
        if endpoint is not None and endpoint not in {ep.endpoint_id for ep in snapshot.endpoints}:
            raise CliError(f"No endpoint with id '{endpoint}'.")
        cluster = Cluster(snapshot)
        follow = bool(args["--follow"])
        with nodequery.Question(store, asked, kind="drops", follow=follow) as question:
            answers = question.wait()
            missing = nodequery.silent(asked, answers)
            if missing:
                print(missing, file=sys.stderr)
            entries = _entries(cluster, answers, endpoint)
            if not follow:
                doc = {"nodes": asked, "unanswered": [n for n in asked if n not in answers],
                       "drops": entries}
                output.emit(args, "PolicyDrops", doc, lambda d: "\n".join(
                    [line(e) for e in d["drops"]] or ["No drops."]))
                return
            _follow(args, store, question, cluster, endpoint, entries, stop)


def _follow(args, store, question, cluster, endpoint, entries, stop) -> None:
    """Print drops as they come, until interrupted (or ``stop``, in tests)."""
    stop = stop or threading.Event()
    as_json = output.format_of(args) == "json"
    seen: dict[str, int] = {}

    def show(batch):
        for entry in batch:
            if entry["seq"] <= seen.get(entry["node"], 0):
                continue
            seen[entry["node"]] = entry["seq"]
            print(json.dumps({"kind": "PolicyDrop", "version": output.SHAPE_VERSION, **entry})
                  if as_json else line(entry), flush=True)
    show(entries)
    while not stop.is_set():
        stop.wait(nodequery.POLL)
        question.keepalive()
        show(_entries(cluster, question.answers(), endpoint))
