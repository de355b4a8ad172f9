"""calico-bird-renderer: keeps one node's BIRD configuration in step with etcd
(node.bird.renderer), run by the node supervisor in the host's namespace.

Usage:
  calico-bird-renderer --config=<FILE> --ctl=<SOCKET> [--name=<NODE>]

Options:
  --config=<FILE>    The BIRD configuration file to keep.
  --ctl=<SOCKET>     BIRD's control socket.
  --name=<NODE>      This node's name; else CALICO_NODENAME, else the hostname.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from docopt import docopt

from calicopy import config, logs, metrics, quarantine
from calicopy.datastore.etcd import EtcdStore
from calicopy.service_main import stop_event
from node.bird.renderer import Renderer


def main(argv=None) -> int:
    args = docopt(__doc__, argv)
    try:
        name = config.NODENAME.resolve(args["--name"])
        logs.setup("bird-renderer", name)
        store = EtcdStore.from_env()
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    stop = stop_event()
    metrics.export_to_node("bird-renderer", config.node_paths(name).dir, stop)
    log = logging.getLogger("calico-bird-renderer")
    Renderer(store, name, Path(args["--config"]), args["--ctl"],
             quarantine.for_node(log, config.node_paths(name), "renderer")).run(stop)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
