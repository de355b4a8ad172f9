"""calico-bgp: the BGP service process (the composition root)."""

import sys

from calicopy import config, service_main
from services.bgp.registry import BgpRegistry
from services.bgp.server import create_server


def build(listen, store, security):
    return create_server(listen, BgpRegistry(store), security=security)[0]


if __name__ == "__main__":
    sys.exit(service_main.run("calico-bgp: the BGP service (nodes, peers, BGP settings).",
                              "services.bgp", "calico-bgp", config.BGP_LISTEN, build))
