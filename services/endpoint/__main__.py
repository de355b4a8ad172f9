"""calico-endpoint: one node's endpoint service (the composition root).

Run as `python -m services.endpoint` on the host (in the host's network
namespace). It reconciles etcd with the kernel before it starts serving, and
again every --resync seconds. On a unix socket, it also serves its RPCs as
JSON over HTTP/1.1 on a second socket next to it (endpoint.json.sock next to
endpoint.sock; see json_gateway.py), for the CNI plugin, and runs the CNI
plugin's commands that its processes forward on a third (endpoint.cni.sock;
see cni_server.py). The sockets are root-only (0600), and so is the node's
state folder they are in (0700).

Usage:
  calico-endpoint [--name=<NODE>] [--listen=<ADDR>] [--etcd-endpoints=<EPS>]
                  [--ipam=<ADDR>] [--no-ipv6] [--resync=<SECONDS>]
                  [--policy-wait=<SECONDS>] [--mtu=<MTU>] [--insecure]

Options:
  --name=<NODE>            This node's name; else CALICO_NODENAME, else the
                           hostname.
  --listen=<ADDR>          unix:<path> or host:port to serve on; else
                           CALICO_ENDPOINT_ADDR, else
                           unix:<CALICO_STATE_DIR>/<node>/endpoint.sock.
  --etcd-endpoints=<EPS>   etcd client URLs; else ETCD_ENDPOINTS or
                           ETCD_AUTHORITY, else 127.0.0.1:2379 (TLS files:
                           ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE).
  --ipam=<ADDR>            The IPAM service (its replicas' addresses,
                           comma-separated); else CALICO_IPAM_ADDR, else
                           127.0.0.1:50051.
  --no-ipv6                Give workloads no IPv6 addresses even if the
                           kernel could route them.
  --resync=<SECONDS>       Seconds between full reconciliations (default 60).
  --policy-wait=<SECONDS>  A policy agent runs on this node: an add returns
                           only once it has programmed the endpoint, and fails
                           if that takes longer than this. Default: no agent.
  --mtu=<MTU>              The MTU of workloads added without one. Default:
                           while an IPv4 pool uses IP-in-IP, the underlay's
                           MTU minus 20; else the kernel's (1500).
  --insecure               Allow a TCP --listen address (and TCP calls to IPAM)
                           in plaintext, every caller acting as admin: for
                           throw-away labs only (logged at start).

It presents this node's certificate (CALICO_TLS_CA_FILE, CALICO_TLS_CERT_FILE,
CALICO_TLS_KEY_FILE: identity node:<name>) to IPAM, and serves a TCP --listen
address only with it (mutual TLS); its unix sockets are root-only. Callers are
authorised by calicopy.authz: admin, schedulers, and this node itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from docopt import docopt

from calicopy import config, logs, metrics, quarantine
from calicopy.api.ipam import IpamClient
from calicopy.datastore.etcd import EtcdStore
from calicopy.errors import Unavailable
from calicopy.authz import Authorizer
from calicopy.localfiles import private_dir
from calicopy.service_main import describe, stop_event
from calicopy.tls import Security
from services.endpoint import kernel
from services.endpoint.endpoints import EndpointManager
from services.endpoint.cni_server import CniServer
from services.endpoint.json_gateway import JsonGateway
from services.endpoint.mtu import DefaultMtu
from services.endpoint.server import create_server

log = logging.getLogger("calico-endpoint")

STARTUP_WAIT = 60.0


def _retry_until_up(what, fn, deadline):
    while True:
        try:
            return fn()
        except Unavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for %s: %s", what, exc)
            time.sleep(0.5)


def main(argv=None) -> int:
    args = docopt(__doc__, argv)
    try:
        node = config.NODENAME.resolve(args["--name"])
        logs.setup("endpoint", node)
        listen = config.endpoint_addr(args["--listen"], node)
        security = Security.from_env(insecure=args["--insecure"] or None)
        store = EtcdStore.from_env(args["--etcd-endpoints"])
        ipam_addr = config.IPAM_ADDR.resolve(args["--ipam"])
        resync = config.parse_seconds(args["--resync"] or "60")
        policy_wait = config.parse_seconds(args["--policy-wait"]) if args["--policy-wait"] \
            else 0.0
        mtu = int(args["--mtu"]) if args["--mtu"] else 0
        if not listen.startswith("unix:") and security.tls is None and not security.insecure:
            raise security.refuse_plaintext(listen, "serve")
    except (config.ConfigError, ValueError) as exc:
        print(f"Invalid --mtu '{args['--mtu']}': give a number of bytes." if "int()" in str(exc)
              else exc, file=sys.stderr)
        return 1

    if listen.startswith("unix:"):
        path = listen[len("unix:"):]
        folder = os.path.dirname(path)
        # The node's state folder is root-only; another folder given with
        # --listen keeps its mode unless we create it.
        if not os.path.isdir(folder) or \
                os.path.realpath(folder) == os.path.realpath(config.node_paths(node).dir):
            private_dir(folder)
        if os.path.exists(path):
            os.unlink(path)          # a socket left by a previous run

    ipam = IpamClient(ipam_addr, timeout=config.RPC_TIMEOUT.resolve(), security=security,
                      wait_for_ready=True)      # rides out an IPAM (re)starting
    dataplane = kernel.KernelDataplane()
    kernel.enable_forwarding()
    manager = EndpointManager(store, ipam, dataplane, node,
                              ipv6=dataplane.ipv6 and not args["--no-ipv6"],
                              policy_wait=policy_wait,
                              quarantine=quarantine.for_node(log, config.node_paths(node),
                                                             "endpoint"),
                              default_mtu=DefaultMtu(store, node, mtu))
    deadline = time.monotonic() + STARTUP_WAIT
    try:
        counts = _retry_until_up("etcd and IPAM", lambda: manager.reconcile(startup=True),
                                 deadline)
    except Unavailable as exc:
        log.error("%s", exc)
        return 1
    log.info("start-up reconcile of node %s: %s", node, counts)

    # The JSON and CNI sockets first: once the gRPC server answers (what
    # starters wait for), they all do.
    json_path = config.endpoint_json_socket(listen)
    gateway = JsonGateway(json_path, manager) if json_path else None
    cni = CniServer(config.endpoint_cni_socket(listen), gateway) if gateway else None
    if gateway is not None:
        try:
            gateway.start()
        except OSError as exc:      # e.g. a path too long for a unix socket
            log.error("cannot serve JSON on %s (%s); the CNI plugin will not reach this "
                      "node's endpoint service", json_path, exc)
            gateway = json_path = cni = None
    if cni is not None:
        try:
            cni.start()
        except OSError as exc:
            log.error("cannot serve the CNI plugin on %s (%s); its processes will run "
                      "every command themselves", cni.path, exc)
            cni = None
    try:
        server, _ = create_server(listen, manager, security=security,
                                  authorizer=Authorizer(node=node))
    except config.ConfigError as exc:
        log.error("%s", exc)
        return 1
    server.start()
    log.info("endpoint service for node %s listening on %s and %s, %s (IPv6 %s; %s)", node,
             listen, f"unix:{json_path} (JSON)" if json_path else "no JSON socket",
             f"unix:{cni.path} (CNI)" if cni else "no CNI socket",
             "on" if manager.ipv6 else "off", describe(security))

    stop = stop_event()
    metrics.export_to_node("endpoint", config.node_paths(node).dir, stop)
    while not stop.wait(resync):
        try:
            counts = manager.reconcile()
            if any(counts.values()):
                log.info("reconcile: %s", counts)
        except Exception:
            log.exception("reconcile failed; will retry")
    log.info("stopping")
    stopped = server.stop(grace=5)
    if cni is not None:
        cni.stop(grace=5)
    if gateway is not None:
        gateway.stop(grace=5)
    stopped.wait()
    ipam.close()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
