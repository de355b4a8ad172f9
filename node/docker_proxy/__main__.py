"""calico-docker-proxy: the Docker API proxy of one node (its composition root).

Started by the node supervisor on a host with Docker. It serves the usual
Docker socket for the engine moved to the alternative one, and watches the
engine (through whichever socket it listens on) so that containers that ask
for Calico are networked, re-instated and released. Logs to stderr.

Usage:
  calico-docker-proxy [--name=<NODE>] [--listen=<SOCK>] [--upstream=<SOCK>]
                      [--resync=<SECONDS>]

Options:
  --name=<NODE>        This node's name; else CALICO_NODENAME, else the hostname.
  --listen=<SOCK>      The socket Docker clients use; else DOCKER_HOST, else
                       /var/run/docker.sock.
  --upstream=<SOCK>    The engine's socket while proxied; default: the
                       listening socket's name with ".real" (docker.sock ->
                       docker.real.sock).
  --resync=<SECONDS>   Seconds between full reconciliations [default: 60].
"""

from __future__ import annotations

import logging
import sys

from docopt import docopt

from calicopy import config, logs, metrics
from calicopy.api.endpoint import EndpointClient
from calicopy.api.policy import ProfileClient
from calicopy.service_main import stop_event
from calicopy.docker_engine import LocalEngine, real_socket
from calicopy.errors import Unavailable
from node.docker_proxy.calico_ip import ContainerNetworking
from node.docker_proxy.proxy import DockerProxy
from node.docker_proxy.watcher import Watcher
from node.readiness import Readiness

# An add waits for the node's policy agent (up to 10 s) before it answers.
RPC_TIMEOUT = 30.0


def main(argv=None) -> int:
    args = docopt(__doc__, argv)
    try:
        node = config.NODENAME.resolve(args["--name"])
        logs.setup("docker-proxy", node)
        listen = config.DOCKER_HOST.resolve(args["--listen"])
        upstream = (config.parse_unix_socket(args["--upstream"]) if args["--upstream"]
                    else real_socket(listen))
        resync = config.parse_seconds(args["--resync"])
        endpoint_addr = config.endpoint_addr(node=node)
        policy_addr = config.POLICY_ADDR.resolve()
    except (config.ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    if upstream == listen:
        print(f"The engine's socket and the proxy's must differ (both {listen}).",
              file=sys.stderr)
        return 1

    engine = LocalEngine(listen, upstream)
    # Each call rides out a service that is (re)starting, within its deadline.
    endpoints = EndpointClient(endpoint_addr, RPC_TIMEOUT, wait_for_ready=True)
    profiles = ProfileClient(policy_addr, RPC_TIMEOUT, wait_for_ready=True)
    networking = ContainerNetworking(engine, endpoints, profiles)
    stop = stop_event()
    metrics.export_to_node("docker-proxy", config.node_paths(node).dir, stop)
    log = logging.getLogger("docker-proxy")
    log.info("node %s: proxy %s -> %s; endpoint service %s", node, listen, upstream,
             endpoint_addr)
    proxy = DockerProxy(listen, upstream, networking)

    def first_call():
        endpoints.node_info()
        if not proxy.settled():
            raise Unavailable(f"not serving {listen} yet")
    ready = Readiness(config.node_paths(node).ready("docker-proxy"), log)
    ready.announce_when(first_call, stop)
    Watcher(engine, networking, resync).start(stop)
    proxy.serve(stop)
    ready.withdraw()
    endpoints.close()
    profiles.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
