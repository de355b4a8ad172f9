"""calico-policy-agent: one node's policy dataplane (the composition root).

Run as `python -m node.policy` in the host's network namespace (the node
supervisor does).

Usage:
  calico-policy-agent [--name=<NODE>] [--backend=<B>]

Options:
  --name=<NODE>    This node's name; else CALICO_NODENAME, else the hostname.
  --backend=<B>    iptables backend, nft or legacy; default: the one the host's
                   existing rules use.
"""

from __future__ import annotations

import logging
import sys

from docopt import docopt

from calicopy import config, logs, metrics, quarantine
from calicopy.datastore.etcd import EtcdStore
from calicopy.service_main import stop_event
from node.policy import commands, drops
from node.policy.agent import Agent
from node.policy.iptables import detect_backend


def main(argv=None) -> int:
    args = docopt(__doc__, argv)
    try:
        node = config.NODENAME.resolve(args["--name"])
        logs.setup("policy-agent", node)
        store = EtcdStore.from_env()
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    backend = args["--backend"] or detect_backend()
    if backend not in ("nft", "legacy"):
        print(f"Invalid --backend '{backend}': use nft or legacy.", file=sys.stderr)
        return 1
    logging.getLogger("calico-policy-agent").info("node %s, iptables backend %s", node, backend)
    stop = stop_event()
    metrics.export_to_node("policy-agent", config.node_paths(node).dir, stop)
    log = logging.getLogger("calico-policy-agent")
    agent = Agent(store, node, backend, run=commands.measured(commands.run),
                  quarantine=quarantine.for_node(log, config.node_paths(node), "policy"))
    drops.start(store, node, backend, agent.tables, stop)   # live drops, rule counters
    agent.run(stop)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
