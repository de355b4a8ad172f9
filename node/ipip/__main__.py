"""calico-ipip: this node's IP-in-IP (node.ipip.agent), run by the node
supervisor in the host's namespace.

Usage:
  calico-ipip [--name=<NODE>]

Options:
  --name=<NODE>    This node's name; else CALICO_NODENAME, else the hostname.

It presents the node's certificate (CALICO_TLS_*) to the IPAM service
(CALICO_IPAM_ADDR) for the tunnel's address, and reads etcd as the node.
"""

from __future__ import annotations

import sys

from docopt import docopt

from calicopy import config, logs, metrics
from calicopy.api.ipam import IpamClient
from calicopy.datastore.etcd import EtcdStore
from calicopy.service_main import stop_event
from calicopy.tls import Security
from node.ipip.agent import IpipAgent


def main(argv=None) -> int:
    args = docopt(__doc__, argv)
    try:
        name = config.NODENAME.resolve(args["--name"])
        logs.setup("ipip", name)
        store = EtcdStore.from_env()
        ipam = IpamClient(config.IPAM_ADDR.resolve(), timeout=config.RPC_TIMEOUT.resolve(),
                          security=Security.from_env())
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    stop = stop_event()
    metrics.export_to_node("ipip", config.node_paths(name).dir, stop)
    IpipAgent(store, name, ipam).run(stop)
    ipam.close()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
