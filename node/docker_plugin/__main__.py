"""calico-py's Docker plugin (the plugin process's composition root).

Started by the node supervisor when a Docker engine answers on DOCKER_HOST.
Serves the network driver "calico" and the IPAM driver "calico-ipam" on
<plugin folder>/calico.sock (root-only: 0600). Docker finds a plugin by the
socket's file name, so calico-ipam.sock is a symbolic link to the same socket.

Usage:
  calico-docker-plugin --name=<NODE> [--plugin-dir=<DIR>]
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from docopt import docopt

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2_grpc
from calico.policy.v1 import policy_pb2_grpc
from calicopy import config, logs, metrics
from calicopy.docker_engine import LocalEngine, real_socket
from calicopy.errors import CalicoError
from calicopy.localfiles import shared_dir
from calicopy.rpc import Client
from calicopy.service_main import stop_event
from node.docker_plugin import protocol
from node.docker_plugin.ipam import IpamDriver
from node.docker_plugin.network import NetworkDriver
from node.readiness import Readiness

SOCKET_NAME = config.DOCKER_PLUGIN_SOCKET
# An add waits up to 10 s for the node's policy agent: a shorter deadline
# would give up on adds that then complete.
ENDPOINT_TIMEOUT = 30.0
COLLECT_EVERY = 60.0
IPAM_LINK = "calico-ipam.sock"
log = logging.getLogger("docker-plugin")


def main(argv=None) -> int:
    args = docopt(__doc__, argv)
    node = args["--name"]
    logs.setup("docker-plugin", node)
    plugin_dir = config.DOCKER_PLUGIN_DIR.resolve(args["--plugin-dir"])
    timeout = config.RPC_TIMEOUT.resolve()
    # Each call rides out a service that is (re)starting, within its deadline.
    ipam = Client("IPAM service", config.IPAM_ADDR.resolve(), ipam_pb2_grpc.IpamServiceStub,
                  timeout, wait_for_ready=True)
    endpoints = Client("endpoint service", config.endpoint_addr(node=node),
                       endpoint_pb2_grpc.EndpointServiceStub, max(timeout, ENDPOINT_TIMEOUT),
                       wait_for_ready=True)
    policy = Client("policy service", config.POLICY_ADDR.resolve(),
                    policy_pb2_grpc.PolicyServiceStub, timeout, wait_for_ready=True)
    methods = {"Plugin.Activate": lambda _: {"Implements": ["NetworkDriver", "IpamDriver"]}}
    # The engine itself, wherever it listens (proxied or not).
    docker_sock = config.DOCKER_HOST.resolve()
    engine = LocalEngine(docker_sock, real_socket(docker_sock))
    ipam_driver = IpamDriver(ipam, node)
    network = NetworkDriver(endpoints, policy, engine, handles=ipam_driver.handle_of)
    ipam_driver.before_release = network.remove_holders
    methods.update(network.methods())
    methods.update(ipam_driver.methods())

    shared_dir(plugin_dir)           # Docker's folder, shared with other plugins
    path = os.path.join(plugin_dir, SOCKET_NAME)
    server = protocol.serve(path, methods)
    link = os.path.join(plugin_dir, IPAM_LINK)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(SOCKET_NAME, link)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log.info("Docker plugin of node %s serving calico and calico-ipam on %s", node, path)
    stop = stop_event()
    metrics.export_to_node("docker-plugin", config.node_paths(node).dir, stop)
    ready = Readiness(config.node_paths(node).ready("docker-plugin"), log)
    ready.announce_when(lambda: endpoints.call("GetNodeInfo",
                                               endpoint_pb2.GetNodeInfoRequest()), stop)
    suspects: set[str] = set()
    while not stop.wait(COLLECT_EVERY):
        try:
            suspects = network.collect(suspects)
        except CalicoError as exc:      # engine or service away: next time
            log.warning("could not compare endpoints with Docker's: %s", exc)
    ready.withdraw()
    server.shutdown()
    server.server_close()
    for stale in (link, path):
        if os.path.lexists(stale):
            os.unlink(stale)
    for client in (ipam, endpoints, policy):
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
