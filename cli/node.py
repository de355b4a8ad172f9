"""Start, stop and configure the calico-py node on this host.

Usage:
  calicoctl node --ip=<IP> [--ip6=<IP6>] [--as=<AS_NUM>] [--name=<NAME>]
                 [--mtu=<MTU>] [--node-cert=<FILE> --node-key=<FILE>]
  calicoctl node stop [--force] [--name=<NAME>]
  calicoctl node remove --name=<NAME>
  calicoctl node bgp peer add <PEER_IP> as <AS_NUM> [--name=<NAME>]
  calicoctl node bgp peer remove <PEER_IP> [as <AS_NUM>] [--name=<NAME>]
  calicoctl node bgp peer show [--ipv4 | --ipv6] [--name=<NAME>] [-o <FORMAT>]

Options:
  --ip=<IP>        This host's IPv4 address: its BGP router id and session address.
  --ip6=<IP6>      This host's IPv6 address, for IPv6 workloads and sessions.
  --as=<AS_NUM>    This node's AS number (default: the cluster's, see `calicoctl bgp`).
  --name=<NAME>    The node's name (default: CALICO_NODENAME, else the hostname).
  --mtu=<MTU>      The MTU of this node's workloads when their add gives none
                   (68-65535). Default: while an IPv4 pool uses IP-in-IP, the
                   underlay's MTU minus 20; else the kernel's (1500). Taken
                   when the node starts.
  --node-cert=<FILE>  The node's own certificate (identity node:<name>), which its
                   processes present to the services and to etcd; else
                   CALICO_NODE_TLS_CERT_FILE, else node-<name>.pem in the
                   certificate folder (CALICO_PKI_DIR). Needed with TLS:
                   `calicoctl certs issue node:<name>` makes it.
  --node-key=<FILE>   Its key; else CALICO_NODE_TLS_KEY_FILE, else node-<name>-key.pem.
  --force          Stop even though workloads run here: their endpoints are
                   removed and their addresses released.
  --ipv4           Show only IPv4 peers.
  --ipv6           Show only IPv6 peers.
  -o <FORMAT>      Output format of `node bgp peer show`: table (the default) or
                   json (its shape is in docs/cli-json.md).

`calicoctl node` checks the kernel, creates the default pools if there are
none, registers the node and starts its processes (endpoint service, BIRD and
its config renderer; with Docker, its plugin and CALICO_IP proxy) under a
supervisor that restarts them if they die. It returns once every one of them
can serve: the endpoint service answers, BIRD runs, and the plugin and the
proxy have reached the endpoint service. Run again, it only updates the
registration. `node stop` stops them and removes the node's configuration.
All of these must run as root.

`node remove --name=<NAME>` retires a node from any host, whether it is dead
or alive: its addresses are released, its block affinities dropped (blocks
that still hold other hosts' addresses stay, without affinity), and its
records removed (endpoints, node, its own BGP peers, status). If the node
runs on this host, its processes are stopped first (as `node stop --force`
does); processes still running elsewhere must be stopped there.

calicoctl itself acts as the operator (admin, CALICO_TLS_*); the node's
processes act as node:<name>, which may change only that node's own records
and addresses. When etcd's authentication is on, `calicoctl node` also makes
the node's etcd user, which may write only under the node's own prefix.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from calico.bgp.v1 import bgp_pb2
from calico.endpoint.v1 import endpoint_pb2
from calico.ipam.v1 import ipam_pb2
from calicopy import config
from calicopy.docker_engine import LocalEngine, real_socket
from calicopy.localfiles import private_dir
from calicopy.rpc import check_health
from calicopy.tls import Security, TlsFiles
from cli import client, output, validate
from cli.bgp import peer_list
from cli.errors import CliError
from cli.output import table

DEFAULT_POOLS = ("192.168.0.0/16", "fd80:24e2:f998:72d6::/64")
START_WAIT = 30.0
STOP_WAIT = 15.0


def run(args: dict) -> None:
    validate.root()
    name = config.NODENAME.resolve(args["--name"])
    if args["bgp"]:
        peers(args, name)
    elif args["stop"]:
        stop(name, args["--force"])
    elif args["remove"]:
        remove(name)
    else:
        mtu = _mtu(args["--mtu"])
        start(name, args["--ip"], args["--ip6"], args["--as"],
              node_credentials(name, args["--node-cert"], args["--node-key"]), mtu)


def _mtu(text: str | None) -> int:
    if text is None:
        return 0
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise CliError(f"Invalid MTU '{text}': give 68 to 65535.")
    return int(text)


def supervisor_pid(name: str) -> int | None:
    from node.supervisor import running_pid
    return running_pid(config.node_paths(name).pid, name)


def _local_addresses() -> set[str]:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()}


def node_credentials(name: str, cert: str | None, key: str | None) -> dict[str, str]:
    """The environment that makes the node's processes present the node's own
    certificate (to the services and to etcd); empty without TLS."""
    security = Security.from_env()
    cert = config.NODE_TLS_CERT_FILE.resolve(cert)
    key = config.NODE_TLS_KEY_FILE.resolve(key)
    if not cert and not key:        # the certificate folder's, when it has one
        from calicopy import pki
        found = pki.paths(config.PKI_DIR.resolve(), f"node:{name}")
        if all(p.is_file() for p in found):
            cert, key = map(str, found)
    if security.tls is None and not cert:
        return {}
    if not cert or not key:
        raise CliError(f"The node's processes need node {name}'s own certificate: give "
                       f"--node-cert and --node-key ('calicoctl certs issue node:{name}' "
                       "makes them).")
    ca = str(security.tls.ca) if security.tls else config.TLS_CA_FILE.resolve()
    files = TlsFiles.of(ca, cert, key)
    identity = files.identity
    if identity != f"node:{name}":
        raise CliError(f"{cert} is the certificate of {identity}, not of node:{name}.")
    env = {"CALICO_TLS_CA_FILE": ca, "CALICO_TLS_CERT_FILE": cert, "CALICO_TLS_KEY_FILE": key}
    etcd = config.etcd_tls_files()
    if etcd is not None:        # the same identity to etcd, trusting etcd's CA
        env.update(ETCD_CA_CERT_FILE=str(etcd.ca), ETCD_CERT_FILE=cert, ETCD_KEY_FILE=key)
    return env


def _ensure_etcd_user(name: str) -> None:
    """The node's own etcd user, made as the operator: ready for when etcd's
    authentication is on (it may be switched on later)."""
    from calicopy.datastore import etcd_auth
    from calicopy.datastore.etcd import EtcdStore
    from calicopy.errors import CalicoError
    store = EtcdStore.from_env()
    try:
        etcd_auth.ensure_node(store, name)
    except (CalicoError, grpc.RpcError) as exc:
        details = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        print(f"WARNING: could not make the etcd user of node {name} ({details}); with etcd's "
              "authentication on, its processes will be refused.", file=sys.stderr)
    finally:
        store.close()


def start(name: str, ip_text: str, ip6_text: str | None, as_text: str | None,
          credentials: dict[str, str], mtu: int = 0) -> None:
    ip = validate.ip_of_version(ip_text, 4, "Invalid IPv4 address specified with --ip argument.")
    ip6 = validate.ip_of_version(ip6_text, 6, "Invalid IPv6 address specified with --ip6 "
                                 "argument.") if ip6_text else ""
    as_num = validate.as_number(as_text) if as_text else 0
    metrics_addr = config.metrics_addr("node")       # a bad CALICO_METRICS_ADDR stops us here
    from node import features
    problems = features.missing()
    if problems:
        raise CliError(" ".join(problems))
    local = _local_addresses()
    for addr, flag in ((ip, "--ip"), (ip6, "--ip6")):
        if addr and str(ipaddress.ip_address(addr)) not in local:
            print(f"WARNING: {addr} ({flag}) is not an address of this host; BGP sessions "
                  "to it will not come up.", file=sys.stderr)

    ipam = client.ipam()
    if not client.call(ipam, "ListPools", ipam_pb2.ListPoolsRequest()).pools:
        created = []
        for cidr in DEFAULT_POOLS:
            try:
                ipam.call("CreatePool", ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr=cidr)))
                created.append(cidr)
            except client.RpcFailure as exc:
                # Another node starting at the same moment made it first.
                if exc.code != grpc.StatusCode.ALREADY_EXISTS:
                    raise CliError(str(exc)) from None
        if created:
            print(f"No pools were defined: created {' and '.join(created)}.")
    resp = client.call(client.bgp(), "RegisterNode", bgp_pb2.RegisterNodeRequest(
        node=bgp_pb2.Node(name=name, ipv4=ip, ipv6=ip6, as_num=as_num)))

    if credentials:
        _ensure_etcd_user(name)
    if supervisor_pid(name):
        changed = "its registration was updated" if resp.changed else "nothing changed"
        print(f"Calico node {name} is already running; {changed}.")
        return
    paths = config.node_paths(name)
    folder = private_dir(paths.dir)
    # Docker's plugin and proxy run when the engine's socket (or its
    # alternative) is there; we return once each has reached the endpoint
    # service (its ready file), so that `docker run` works the moment we do.
    docker_sock = config.DOCKER_HOST.resolve()
    with_docker = os.path.exists(docker_sock) or os.path.exists(real_socket(docker_sock))
    ready = [paths.ready(p) for p in ("docker-plugin", "docker-proxy")] if with_docker else []
    for stale in ready:
        stale.unlink(missing_ok=True)       # a killed node's
    argv = [sys.executable, "-m", "node", f"--name={name}"] + ([] if ip6 else ["--no-ipv6"]) \
        + ([f"--mtu={mtu}"] if mtu else [])
    with open(paths.supervisor_log, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=Path(__file__).resolve().parent.parent,
                                env={**os.environ, **credentials})
    deadline = time.monotonic() + START_WAIT
    endpoint = paths.endpoint_addr
    # So that `docker network create` works as soon as we return, wait for the
    # plugin's socket too when the engine answers.
    plugin = (Path(config.DOCKER_PLUGIN_DIR.resolve()) / config.DOCKER_PLUGIN_SOCKET
              if LocalEngine(docker_sock, real_socket(docker_sock)).available() else None)
    while not (check_health(endpoint, timeout=0.5) and paths.bird_ctl.exists()
               and (plugin is None or plugin.exists()) and all(f.exists() for f in ready)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise CliError(f"Calico node {name} did not start; see the logs in {folder}.")
        time.sleep(0.2)
    docker = f"; Docker plugin on {plugin}" if plugin else ""
    who = f"; its processes act as node:{name}" if credentials else ""
    print(f"Calico node {name} started ({ip}{', ' + ip6 if ip6 else ''}){docker}{who}; "
          f"logs in {folder}; {_metrics_where(paths, metrics_addr)}.")


def _metrics_where(paths, addr: str) -> str:
    """Where the node serves its processes' metrics, as its supervisor says
    (status.json), for the line `calicoctl node` ends with."""
    if not addr:
        return "no metrics (CALICO_METRICS_ADDR=off)"
    try:
        url = json.loads(paths.status.read_text()).get("metrics")
    except (OSError, ValueError, AttributeError):
        url = None
    if url:
        return f"metrics on {url}"
    return f"no metrics: {addr} could not be served (see {paths.supervisor_log})"


def stop(name: str, force: bool) -> None:
    bgp = client.bgp()
    try:
        nodes = bgp.call("ListNodes", bgp_pb2.ListNodesRequest()).nodes
    except client.RpcFailure as exc:
        raise CliError(str(exc)) from None
    mine = next((n for n in nodes if n.node.name == name), None)
    if mine is None and not supervisor_pid(name):
        raise CliError(f"Node {name} is not running and not registered.")
    if mine is not None and mine.endpoint_count and not force:
        raise CliError("Current host has active endpoints so can't be stopped. "
                       "Force with --force")
    if mine is not None and mine.endpoint_count:
        _remove_endpoints(name)
    pid = supervisor_pid(name)
    if pid:
        _stop_process_group(pid)
    _flush_bird_routes()
    from node.ipip.dataplane import IpipDataplane
    IpipDataplane().teardown(mine.node.ipv4 if mine is not None else "")
    if mine is not None:
        client.call(bgp, "DeleteNode", bgp_pb2.DeleteNodeRequest(name=name, force=True))
    print("Node stopped and all configuration removed")


def remove(name: str) -> None:
    """Retire node ``name``: records (BGP service) first, so that no endpoint
    lists an address once it is free, then its addresses and blocks (IPAM)."""
    released = []       # by its endpoint service, when it runs here
    if supervisor_pid(name):
        try:
            released = _remove_endpoints(name)
        except CliError as exc:         # its endpoint service is gone: stop it all the same
            print(f"WARNING: could not remove the endpoints of node {name} through its "
                  f"endpoint service ({exc}); its interfaces stay until it starts again.",
                  file=sys.stderr)
        _stop_process_group(supervisor_pid(name) or 0)
        _flush_bird_routes()
    registered = True
    try:
        client.bgp().call("DeleteNode", bgp_pb2.DeleteNodeRequest(name=name, force=True))
    except client.RpcFailure as exc:
        if exc.code != grpc.StatusCode.NOT_FOUND:
            raise CliError(str(exc)) from None
        registered = False
    done = client.call(client.ipam(), "ReleaseHost", ipam_pb2.ReleaseHostRequest(hostname=name))
    released += done.released
    if not (registered or released or done.blocks_freed or done.blocks_unaffined):
        raise CliError(f"Node {name} is not registered and holds no addresses or blocks: "
                       "nothing to remove.")
    kept = (f"; {len(done.blocks_unaffined)} block(s) still hold other hosts' addresses and "
            "stay, without affinity") if done.blocks_unaffined else ""
    print(f"Removed node {name}: released {len(released)} address(es) and freed "
          f"{len(done.blocks_freed)} block(s){kept}.")


def _remove_endpoints(name: str) -> list[str]:
    """Remove every endpoint of the node through its endpoint service; the
    addresses that released."""
    from calico.endpoint.v1 import endpoint_pb2_grpc
    service = client.Service("endpoint service", config.ENDPOINT_ADDR,
                             endpoint_pb2_grpc.EndpointServiceStub,
                             addr=config.endpoint_addr(node=name))
    eps = client.call(service, "ListEndpoints", endpoint_pb2.ListEndpointsRequest()).endpoints
    released = []
    for workload in sorted({(e.orchestrator, e.workload_id) for e in eps}):
        removed = client.call(service, "RemoveEndpoint", endpoint_pb2.RemoveEndpointRequest(
            orchestrator=workload[0], workload_id=workload[1])).removed
        released += [net.split("/")[0] for ep in removed
                     for net in list(ep.ipv4_nets) + list(ep.ipv6_nets)]
    return released


def _stop_process_group(pid: int) -> None:
    if not pid:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)  # the supervisor leads its own process group
    except ProcessLookupError:
        pass


def _flush_bird_routes() -> None:
    """BIRD leaves its routes in the kernel when it stops (so restarts do not
    interrupt traffic); a node that is stopped for good removes them."""
    import socket
    from pyroute2 import IPRoute
    RTPROT_BIRD = 12
    from pyroute2.netlink.exceptions import NetlinkError
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, proto=RTPROT_BIRD):
                if route["proto"] != RTPROT_BIRD:
                    continue
                try:
                    ipr.route("del", family=family, dst=f"{route.get_attr('RTA_DST')}/"
                              f"{route['dst_len']}", proto=RTPROT_BIRD, type=route["type"],
                              table=route.get_attr("RTA_TABLE") or 254)
                except NetlinkError:        # gone meanwhile
                    continue


def peers(args: dict, name: str) -> None:
    bgp = client.bgp()
    if args["show"]:
        version = 4 if args["--ipv4"] else 6 if args["--ipv6"] else 0
        found = client.call(bgp, "ListPeers", bgp_pb2.ListPeersRequest(
            node=name, ip_version=version)).peers
        versions = [v for v in (4, 6) if version in (0, v)]

        def render(doc):
            parts = []
            for v in versions:
                rows = [[p["ip"], p["as_num"]] for p in doc["peers"] if p["ip_version"] == v]
                parts.append(table([f"Node specific IPv{v} BGP Peer", "AS Num"], rows) if rows
                             else f"No IPv{v} BGP Peers defined for node {doc['node']}.")
            return "\n".join(parts)
        output.emit(args, "NodeBgpPeerList",
                    {"node": name, "peers": peer_list(found, versions)}, render)
        return
    ip = validate.peer_ip(args["<PEER_IP>"])
    if args["add"]:
        as_num = validate.as_number(args["<AS_NUM>"])
        client.call(bgp, "AddPeer", bgp_pb2.AddPeerRequest(
            peer=bgp_pb2.Peer(ip=ip, as_num=as_num, node=name)))
        print(f"Added BGP peer {ip} (AS {as_num}) to node {name}.")
    else:
        client.call(bgp, "RemovePeer", bgp_pb2.RemovePeerRequest(ip=ip, node=name))
        print(f"Removed BGP peer {ip} from node {name}.")
