"""calico-ipam: the IPAM service process (the composition root)."""

import sys

from calicopy import config, service_main
from services.ipam.allocator import Ipam
from services.ipam.server import create_server


def build(listen, store, security):
    return create_server(listen, Ipam(store), security=security)[0]


if __name__ == "__main__":
    sys.exit(service_main.run("calico-ipam: the IPAM service.", "services.ipam",
                              "calico-ipam", config.IPAM_LISTEN, build))
