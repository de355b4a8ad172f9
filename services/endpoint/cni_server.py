"""The node side of the ``calico`` CNI plugin: its commands, run in the endpoint service.

A runtime starts the plugin as a process per command; that process
(``cni.thin``) imports nothing that costs and forwards ADD, DEL, CHECK and GC
here, on a unix socket next to the gRPC one (``endpoint.cni.sock``:
``calicopy.config.endpoint_cni_socket``), as the invocation itself: the
plugin process's environment, host name and stdin. This module runs the
plugin's own code on it (``cni.skel.run`` with ``NodeSidePlugin``, a
``cni.calico.CalicoPlugin``) and answers with what that process must print
and its exit code, so every rule of the plugin (configuration, errors,
results in each CNI version, chaining) holds as if it ran there. The wire
format is ``cni.thin``'s.

What differs from the plugin's own process is only where its calls go:

- the endpoint service's calls go straight to this service (the JSON
  gateway's ``call``, without a socket: the same servicer, the same status
  names and messages as through the JSON socket, the plugin's timeout as
  the deadline); one that took longer than that timeout is answered as the
  plugin's socket would have answered it (``DEADLINE_EXCEEDED``), only
  later: when the service has finished or undone the work;
- CHECK reads the workload's interface over netlink (``NetlinkView``), not
  with ``ip -json`` in a subprocess;
- what only the plugin's process can do is handed back to it
  (``skel.HandBack``, before anything changed): creating a profile over
  gRPC with the credentials its configuration and environment name (once
  per network and node every few minutes: cni/profiles.py), STATUS, and a
  configuration that names another endpoint service than this one.

Only root is served, as on the other sockets: the socket is 0600 from the
moment it is bound and in the node's 0700 folder, and each connection's
peer credentials are checked besides (a non-root caller that got past the
file mode gets the plugin's error for ``PERMISSION_DENIED``, and nothing
runs).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socketserver
import time

from cni import calico, netcheck, skel, spec
from cni.rpc import EndpointClient, RpcFailure
from services.endpoint.json_gateway import PATH_PREFIX, JsonGateway
from services.endpoint.local_socket import LocalSocketServer, peer_uid

log = logging.getLogger(__name__)

PROTOCOL = b"calico-cni/1"
HAND_BACK = b"hand-back"
MAX_REQUEST = 8 << 20       # environment and stdin together


class LocalEndpoints(EndpointClient):
    """``cni.rpc.EndpointClient`` whose calls are this service's own (the
    gateway's ``call``, in this thread). A call that took longer than the
    plugin's timeout is answered as its socket would have: DEADLINE_EXCEEDED
    (the service finished or undid the work, as for a caller gone)."""

    clock = staticmethod(time.monotonic)

    def __init__(self, services, gateway: JsonGateway):
        super().__init__(services)
        self.gateway = gateway

    def _exchange(self, method: str, body: bytes) -> tuple[int, bytes]:
        started = self.clock()
        answer = self.gateway.call(f"{PATH_PREFIX}{method}", body, self.timeout)
        if self.clock() - started > self.timeout:
            raise self._failure("DEADLINE_EXCEEDED", "")
        return answer


class NetlinkView:
    """CHECK's view of the workload's interface, over netlink in its
    namespace: the shapes ``ip -json`` gives (what netcheck.differences reads)."""

    @staticmethod
    def verify(path: str, ifname: str, mac: str, nets: list[str], gw4: str, gw6: str
               ) -> list[str]:
        return netcheck.differences(*NetlinkView.read(path, ifname), ifname, mac, nets,
                                    gw4, gw6)

    @staticmethod
    def read(path: str, ifname: str) -> tuple[dict | None, list, list]:
        import socket as sockets

        from pyroute2 import IPRoute

        from calicopy import netns
        try:
            sock = netns.netlink_socket(path)
        except Exception as exc:     # noqa: BLE001 (gone meanwhile, or not a namespace)
            raise spec.CniError(spec.IO_FAILURE, f"Cannot read the network namespace {path}.",
                                str(exc)) from None
        with IPRoute(fileno=sock.detach()) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return None, [], []
            index = found[0]
            (link,) = ipr.get_links(index)
            flags = ["UP"] if link["flags"] & 1 else []
            addrs = [{"local": a.get_attr("IFA_ADDRESS"), "prefixlen": a["prefixlen"],
                      "scope": {253: "link", 254: "host"}.get(a["scope"], "global")}
                     for a in ipr.get_addr(index=index)]
            routes = {}
            for family in (sockets.AF_INET, sockets.AF_INET6):
                routes[family] = [
                    _route(r) for r in ipr.get_routes(family=family, table=254, oif=index)
                    if r.get_attr("RTA_OIF") == index]
        return ({"flags": flags, "address": link.get_attr("IFLA_ADDRESS") or "",
                 "addr_info": addrs}, routes[sockets.AF_INET], routes[sockets.AF_INET6])


def _route(route) -> dict:
    """A route as ``ip -json route`` names its destination and gateway."""
    dst = route.get_attr("RTA_DST")
    out = {"dst": "default" if dst is None else
           dst if route["dst_len"] in (32, 128) else f"{dst}/{route['dst_len']}"}
    gateway = route.get_attr("RTA_GATEWAY")
    if gateway:
        out["gateway"] = gateway
    return out


class NodeSidePlugin(calico.CalicoPlugin):
    """``CalicoPlugin`` as the node runs it for a forwarded invocation."""

    def __init__(self, gateway: JsonGateway):
        self.gateway = gateway

    def _endpoints(self, services):
        if services.endpoint_json != self.gateway.path:
            raise skel.HandBack(f"the configuration names the endpoint service at "
                                f"{services.endpoint_addr}")
        return LocalEndpoints(services, self.gateway)

    @staticmethod
    def _create_profiles(cfg, unknown, confirmed) -> None:
        raise skel.HandBack(f"profiles to create: {', '.join(unknown)}")

    @staticmethod
    def _verify(path, ifname, mac, nets, gw4, gw6) -> list[str]:
        return NetlinkView.verify(path, ifname, mac, nets, gw4, gw6)

    def status(self, env, conf, version) -> None:
        raise skel.HandBack("STATUS asks the IPAM and policy services")


def _version_of(stdin: bytes) -> str:
    """The configuration's cniVersion if we speak it, as skel.run answers errors."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return spec.LATEST
    return version if version in spec.SUPPORTED_VERSIONS else spec.LATEST


class CniServer(LocalSocketServer):
    """Serves forwarded invocations on ``path``, for the endpoint service
    whose JSON gateway is ``gateway``."""

    name = "cni-server"

    def __init__(self, path: str, gateway: JsonGateway):
        super().__init__(path)
        self.gateway = gateway
        self.plugin = NodeSidePlugin(gateway)

    def invoke(self, environ: dict[str, str], hostname: str, stdin: bytes
               ) -> tuple[int, bytes] | None:
        """(exit code, stdout) of one invocation; None: hand it back."""
        out = io.StringIO()
        started = time.monotonic()
        try:
            code = skel.run(self.plugin, environ=environ, stdin=io.BytesIO(stdin), stdout=out,
                            hostname=hostname)
        except skel.HandBack as why:
            log.debug("%s handed back: %s", environ.get("CNI_COMMAND"), why)
            return None
        log.debug("%s of %s: exit %d in %.1f ms", environ.get("CNI_COMMAND"),
                  environ.get("CNI_CONTAINERID"), code, (time.monotonic() - started) * 1000)
        return code, out.getvalue().encode()

    def refused(self, uid: int, stdin: bytes) -> tuple[int, bytes]:
        """What a caller that is not root gets: the plugin's error for the
        endpoint service's PERMISSION_DENIED."""
        failure = RpcFailure("PERMISSION_DENIED", f"Only root may call the endpoint service; "
                             f"this process runs as uid {uid}.", EndpointClient.label,
                             f"unix:{self.gateway.path}")
        error = failure.to_cni().to_json(_version_of(stdin))
        return 1, (json.dumps(error) + "\n").encode()


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def read_netstring(rfile, limit: int) -> bytes:
    """One netstring from ``rfile``; ValueError if malformed, longer than
    ``limit`` or cut short."""
    digits = b""
    while True:
        c = rfile.read(1)
        if c == b":":
            break
        if not c.isdigit() or len(digits) > 20:
            raise ValueError("malformed netstring")
        digits += c
    if not digits or int(digits) > limit:
        raise ValueError("netstring too long")
    data = rfile.read(int(digits))
    if len(data) != int(digits) or rfile.read(1) != b",":
        raise ValueError("netstring cut short")
    return data


def parse_environ(block: bytes) -> dict[str, str]:
    """``KEY=VALUE`` entries joined by NUL, decoded as os.environ does."""
    environ = {}
    for entry in block.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key:
            environ[os.fsdecode(key)] = os.fsdecode(value)
    return environ


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        cni: CniServer = self.server.owner
        try:
            if read_netstring(self.rfile, len(PROTOCOL)) != PROTOCOL:
                return          # not a client we know: no answer, it runs the plugin itself
            hostname = read_netstring(self.rfile, 255).decode()
            block = read_netstring(self.rfile, MAX_REQUEST)
            stdin = read_netstring(self.rfile, MAX_REQUEST - len(block))
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("malformed CNI request: %s", exc)
            return
        uid = peer_uid(self.request)
        if not cni.enter():
            return              # stopping: no answer, the plugin runs itself
        try:
            answer = cni.refused(uid, stdin) if uid != 0 else \
                cni.invoke(parse_environ(block), hostname, stdin)
        finally:
            cni.leave()
        if answer is None:
            self.wfile.write(netstring(HAND_BACK) + netstring(b""))
        else:
            code, stdout = answer
            self.wfile.write(netstring(b"%d" % code) + netstring(stdout))


CniServer.handler = _Handler        # defined after the class it serves
