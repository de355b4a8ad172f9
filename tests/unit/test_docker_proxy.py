"""The Docker proxy over real unix sockets: a fake engine behind it holding
containers, the endpoint manager and IPAM over an in-memory store, and a fake
kernel whose namespaces come and go with the fake engine's containers."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import queue
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import docker
import pytest

from calicopy.docker_engine import API_VERSION, LocalEngine, real_socket
from calicopy.errors import CalicoError, NotFound, Unavailable
from node.docker_proxy import http1
from node.docker_proxy.calico_ip import ContainerNetworking
from node.docker_proxy import proxy as proxy_module
from node.docker_proxy.proxy import DockerProxy, socket_access
from node.docker_proxy.watcher import Watcher
from services.endpoint.endpoints import EndpointManager
from services.ipam.allocator import Ipam
from services.policy.registry import PolicyRegistry
from tests.fakes import FakeDataplane, MemoryStore

_pids = itertools.count(4_000_000)      # never a real process


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Docker's API as far as the proxy uses it, with state: containers that
    run (a namespace in the fake kernel) or not, and an events stream."""

    daemon_threads = True

    def __init__(self, path: str, dataplane: FakeDataplane):
        self.dataplane = dataplane
        self.containers: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.subscribers: list[queue.Queue] = []
        self.log_lines: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        super().__init__(path, EngineHandler)

    def find(self, ref: str) -> dict | None:
        for c in self.containers.values():
            if ref in (c["Id"], c["Name"].lstrip("/")) or (len(ref) >= 4 and
                                                           c["Id"].startswith(ref)):
                return c
        return None

    def emit(self, action: str, cid: str) -> None:
        for q in list(self.subscribers):
            q.put({"Type": "container", "Action": action, "status": action, "id": cid,
                   "Actor": {"ID": cid}, "time": int(time.time())})

    def start(self, c: dict) -> None:
        pid = next(_pids)
        c["State"].update(Running=True, Pid=pid)
        self.dataplane.namespaces[f"/proc/{pid}/ns/net"] = {"lo"}
        self.emit("start", c["Id"])

    def stop(self, c: dict) -> None:
        if c["State"]["Running"]:
            self.dataplane.stop_workload(f"/proc/{c['State']['Pid']}/ns/net")
            c["State"].update(Running=False, Pid=0)
            self.emit("die", c["Id"])

    def remove(self, c: dict) -> None:
        self.stop(c)
        del self.containers[c["Id"]]
        self.emit("destroy", c["Id"])

    def create(self, name: str, env: list[str], mode: str = "default") -> dict:
        cid = os.urandom(32).hex()
        c = {"Id": cid, "Name": f"/{name or cid[:12]}", "Config": {"Env": env},
             "HostConfig": {"NetworkMode": mode}, "State": {"Running": False, "Pid": 0},
             "NetworkSettings": {"IPAddress": "", "MacAddress": ""}}
        self.containers[cid] = c
        return c


class EngineHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeEngine

    def log_message(self, *args):
        pass

    def _json(self, status: int, doc=None) -> None:
        body = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        if status not in (204, 304):
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Api-Version", "1.41")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream_head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else {}

    def _route(self, method: str) -> None:
        engine = self.server
        path = re.sub(r"^/v[0-9.]+", "", self.path.split("?")[0])
        engine.requests.append((method, path))
        query = self.path.partition("?")[2]
        if path == "/_ping":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
            return
        if path == "/events":
            return self._events()
        if method == "POST" and path == "/containers/create":
            body = self._body()
            name = re.search(r"name=([^&]+)", query)
            c = engine.create(name.group(1) if name else "", body.get("Env") or [],
                              (body.get("HostConfig") or {}).get("NetworkMode", "default"))
            c["Body"] = body
            return self._json(201, {"Id": c["Id"], "Warnings": []})
        if method == "GET" and path == "/containers/json":
            running = "all=1" not in query
            return self._json(200, [{"Id": c["Id"], "Names": [c["Name"]],
                                     "HostConfig": c["HostConfig"]}
                                    for c in engine.containers.values()
                                    if c["State"]["Running"] or not running])
        m = re.match(r"/containers/([^/]+)(/[a-z]+)?$", path)
        c = engine.find(m.group(1)) if m else None
        if c is None:
            return self._json(404, {"message": f"No such container: {path}"})
        action = m.group(2) or ""
        with engine.lock:
            if method == "POST" and action == "/start":
                if c["State"]["Running"]:
                    return self._json(304)
                engine.start(c)
                if c.get("exits"):
                    engine.stop(c)
                return self._json(204)
            if method == "POST" and action == "/stop":
                if not c["State"]["Running"]:
                    return self._json(304)
                engine.stop(c)
                return self._json(204)
            if method == "POST" and action == "/restart":
                engine.stop(c)
                engine.start(c)
                return self._json(204)
            if method == "DELETE" and not action:
                if c["State"]["Running"] and "force=1" not in query:
                    return self._json(409, {"message": "stop it first"})
                engine.remove(c)
                return self._json(204)
        if method == "GET" and action == "/json":
            return self._json(200, {k: v for k, v in c.items() if k != "Body"})
        if method == "POST" and action == "/attach":
            return self._attach(hang_up="hangup=1" in query)
        if method == "GET" and action == "/logs":
            self._stream_head()
            while (line := engine.log_lines.get(timeout=10)) is not None:
                self._chunk(line)
            self.wfile.write(b"0\r\n\r\n")
            return
        self._json(404, {"message": "page not found"})

    def _events(self) -> None:
        q: queue.Queue = queue.Queue()
        self.server.subscribers.append(q)
        self._stream_head()
        try:
            while True:
                try:
                    event = q.get(timeout=0.2)
                except queue.Empty:
                    if getattr(self.server, "closing", False):
                        return
                    continue
                self._chunk(json.dumps(event).encode() + b"\n")
        except OSError:
            pass
        finally:
            self.server.subscribers.remove(q)
            self.close_connection = True

    def _attach(self, hang_up: bool) -> None:
        """Docker's hijack: 101, then raw bytes both ways. Echoes input in
        upper case; at the client's half-close it says goodbye and closes
        (or, with ``hang_up``, closes at once: the container exited)."""
        self.send_response(101, "UPGRADED")
        self.send_header("Content-Type", "application/vnd.docker.raw-stream")
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "tcp")
        self.end_headers()
        self.wfile.write(b"ready\n")
        self.wfile.flush()
        if hang_up:
            self.close_connection = True
            return
        while data := self.rfile.read1(4096):
            self.wfile.write(data.upper())
            self.wfile.flush()
        self.wfile.write(b"bye\n")
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")


class Client:
    """A Docker client of the proxy's socket: the SDK's low-level client,
    sending requests as given (its own methods would build the bodies) and
    answering (status, decoded body)."""

    def __init__(self, path: str):
        self.api = docker.APIClient(base_url=f"unix://{path}", version=API_VERSION)

    def request(self, method: str, path: str, body=None) -> tuple[int, object]:
        resp = self.api.request(method, f"{self.api.base_url}/v{API_VERSION}{path}", json=body)
        try:
            return resp.status_code, resp.json() if resp.content else None
        except ValueError:
            return resp.status_code, {"message": resp.text.strip()}

    def close(self) -> None:
        self.api.close()


class World:
    def __init__(self, tmp):
        self.store = MemoryStore()
        self.ipam = Ipam(self.store)
        self.ipam.create_pool("10.0.0.0/24")
        self.ipam.create_pool("fd00::/120")
        self.dataplane = FakeDataplane()
        self.manager = EndpointManager(self.store, self.ipam, self.dataplane, "node-1")
        self.policy = PolicyRegistry(self.store)
        self.listen, self.upstream = str(tmp / "docker.sock"), str(tmp / "docker.real.sock")
        self.engine = FakeEngine(self.upstream, self.dataplane)
        threading.Thread(target=self.engine.serve_forever, args=(0.05,), daemon=True).start()
        self.networking = ContainerNetworking(LocalEngine(self.listen, self.upstream),
                                              self.manager, self.policy)
        self.proxy = DockerProxy(self.listen, self.upstream, self.networking, check_every=0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.proxy.serve, args=(self.stop,), daemon=True)
        self.thread.start()
        assert self.proxy.serving.wait(5)
        self.docker = Client(self.listen)

    def close(self):
        self.docker.close()
        self.stop.set()
        self.thread.join(5)
        self.engine.closing = True
        self.engine.shutdown()
        self.engine.server_close()

    def run(self, env: list[str], name: str = "", net: str | None = None) -> tuple[int, dict]:
        """create + start through the proxy; (start status, start body)."""
        body = {"Image": "busybox", "Env": env, "HostConfig": {"NetworkMode": net or "default"},
                "NetworkingConfig": {"EndpointsConfig": {net or "default": {}}}}
        status, created = self.docker.request(
            "POST", "/containers/create" + (f"?name={name}" if name else ""), body)
        if status != 201:
            return status, created
        self.last = created["Id"]
        return self.docker.request("POST", f"/containers/{created['Id']}/start")

    def endpoints(self, cid=None):
        return self.manager.list("docker", cid or self.last)

    def allocated(self) -> int:
        return sum(p["allocated"] for p in self.ipam.usage().pools)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def read_response(reader: http1.Reader) -> tuple[http1.Response, bytes]:
    resp = http1.Response.parse(reader.head())
    return resp, http1.read_body(reader, resp.framing("GET"))


# CALICO_IP ----------------------------------------------------------------------------

def test_plain_containers_pass_through_untouched(world):
    status, _ = world.run(["A=1"], name="plain")
    assert status == 204
    c = world.engine.find("plain")
    assert c["Body"]["HostConfig"]["NetworkMode"] == "default"
    assert c["State"]["Running"] and world.manager.list() == []
    status, doc = world.docker.request("GET", "/containers/plain/json")
    assert status == 200 and doc["NetworkSettings"]["IPAddress"] == ""


def test_calico_ip_auto_networks_the_container(world):
    status, _ = world.run(["CALICO_IP=auto", "CALICO_PROFILE=web"], name="web1")
    assert status == 204
    c = world.engine.find("web1")
    assert c["Body"]["HostConfig"]["NetworkMode"] == "none"
    assert c["Body"]["NetworkingConfig"]["EndpointsConfig"] == {}
    assert c["Body"]["Env"] == ["CALICO_IP=auto", "CALICO_PROFILE=web"]   # the engine keeps it
    [ep] = world.endpoints()
    assert ep.workload_id == c["Id"] and ep.orchestrator == "docker" and ep.persistent
    assert ep.netns == f"/proc/{c['State']['Pid']}/ns/net" and ep.interface_name == "eth0"
    assert ep.profile_ids == ["web"] and ep.labels == {"created-by": "docker-proxy"}
    assert world.policy.get("web").tags == ["web"]
    status, doc = world.docker.request("GET", f"/containers/{c['Id'][:12]}/json")
    ns = doc["NetworkSettings"]
    assert (ns["IPAddress"], ns["IPPrefixLen"], ns["Gateway"], ns["MacAddress"]) == (
        ep.ips[0], 32, "169.254.1.1", ep.mac)
    assert ep.ips[0].startswith("10.0.0.")


def test_fixed_and_dual_stack_addresses(world):
    assert world.run(["CALICO_IP=10.0.0.7,ipv6"], name="fixed")[0] == 204
    [ep] = world.endpoints()
    assert ep.ipv4_nets == ["10.0.0.7/32"] and ep.ipv6_nets[0].startswith("fd00::")
    ns = world.docker.request("GET", "/containers/fixed/json")[1]["NetworkSettings"]
    assert ns["IPAddress"] == "10.0.0.7" and ns["GlobalIPv6Address"] == ep.ipv6_nets[0][:-4]
    assert ns["GlobalIPv6PrefixLen"] == 128 and ns["IPv6Gateway"].startswith("fe80::")
    assert ep.profile_ids == []          # no CALICO_PROFILE: no profile, so isolated


def test_inspect_keeps_the_first_address_after_calicoctl_adds_one(world):
    """`calicoctl container <c> ip add` of a lower address: docker inspect still
    shows the container's first address, as the original tool did."""
    assert world.run(["CALICO_IP=10.0.0.7"], name="first")[0] == 204
    [ep] = world.endpoints()
    world.manager.add_address("docker", ep.workload_id, "eth0", "10.0.0.3")
    ns = world.docker.request("GET", "/containers/first/json")[1]["NetworkSettings"]
    assert ns["IPAddress"] == "10.0.0.7"
    assert [n.split("/")[0] for n in world.endpoints()[0].ipv4_nets] == ["10.0.0.7", "10.0.0.3"]


@pytest.mark.parametrize("env, net, message", [
    (["CALICO_IP=10.0.0.300"], None, "Invalid CALICO_IP '10.0.0.300': give an IP address"),
    (["CALICO_IP="], None, "Invalid CALICO_IP '': give an IP address"),
    (["CALICO_IP=auto", "CALICO_PROFILE=no-dashes"], None,
     "Invalid CALICO_PROFILE 'no-dashes': profile names must be <30 character long"),
    (["CALICO_IP=auto"], "host", "cannot be combined with --net=host"),
])
def test_bad_requests_are_refused_at_create(world, env, net, message):
    status, body = world.run(env, name="bad", net=net)
    assert status == 400 and message in body["message"]
    assert world.engine.containers == {} and world.allocated() == 0


def test_taken_address_fails_the_start_and_stops_the_container(world):
    assert world.run(["CALICO_IP=10.0.0.9"], name="first")[0] == 204
    status, body = world.run(["CALICO_IP=10.0.0.9"], name="second")
    assert status == 409
    assert body["message"] == (
        "Calico could not network container second (CALICO_IP=10.0.0.9): IP address 10.0.0.9 "
        "is already assigned in pool 10.0.0.0/24. The container was stopped.")
    assert not world.engine.find("second")["State"]["Running"]
    assert world.endpoints() == [] and world.allocated() == 1


def test_address_outside_every_pool_fails_the_start(world):
    status, body = world.run(["CALICO_IP=192.168.1.1"], name="outside")
    assert status == 400 and "192.168.1.1 is not in any configured pool" in body["message"]
    assert not world.engine.find("outside")["State"]["Running"] and world.allocated() == 0


def test_a_container_that_exits_at_once_is_no_error(world):
    status, created = world.docker.request("POST", "/containers/create?name=quick",
                                           {"Env": ["CALICO_IP=auto"]})
    world.engine.find("quick")["exits"] = True
    assert world.docker.request("POST", f"/containers/{created['Id']}/start")[0] == 204
    assert world.manager.list() == [] and world.allocated() == 0


class Down:
    """An endpoint service that cannot be reached."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise Unavailable("The endpoint service at unix:/x cannot be reached (refused).")
        return fail


def test_calico_being_away_fails_only_containers_that_ask_for_it(world):
    world.networking.endpoints = Down()
    assert world.run(["A=1"], name="plain")[0] == 204
    assert world.engine.find("plain")["State"]["Running"]
    assert world.docker.request("GET", "/containers/plain/json")[0] == 200
    status, body = world.run(["CALICO_IP=auto"], name="wants")
    assert status == 503 and body["message"] == (
        "Calico could not network container wants (CALICO_IP=auto): The endpoint service at "
        "unix:/x cannot be reached (refused). The container was stopped.")
    assert not world.engine.find("wants")["State"]["Running"]


def test_restart_and_stop_start_keep_address_and_mac(world):
    world.run(["CALICO_IP=auto"], name="keep")
    [before] = world.endpoints()
    assert world.docker.request("POST", "/containers/keep/restart")[0] == 204
    [after] = world.endpoints()
    assert (after.ips, after.mac) == (before.ips, before.mac) and after.netns != before.netns
    assert after.netns in world.dataplane.namespaces
    world.docker.request("POST", "/containers/keep/stop")
    assert world.allocated() == 1                    # reserved while stopped
    world.docker.request("POST", "/containers/keep/start")
    [again] = world.endpoints()
    assert (again.ips, again.mac) == (before.ips, before.mac)
    assert again.netns == f"/proc/{world.engine.find('keep')['State']['Pid']}/ns/net"


def test_remove_releases_the_address(world):
    world.run(["CALICO_IP=auto"], name="gone")
    status, _ = world.docker.request("DELETE", "/containers/gone?force=1")
    assert status == 204
    assert world.manager.list() == [] and world.allocated() == 0


def test_failed_remove_keeps_the_endpoint(world):
    world.run(["CALICO_IP=auto"], name="stays")
    status, _ = world.docker.request("DELETE", "/containers/stays")     # running: refused
    assert status == 409 and len(world.endpoints()) == 1


# Relaying -----------------------------------------------------------------------------

def test_keep_alive_connection_gets_every_request_intercepted(world):
    sock = raw(world.listen)
    reader = http1.Reader(sock)
    body = json.dumps({"Env": ["CALICO_IP=auto"]}).encode()
    sock.sendall(b"POST /v1.41/containers/create?name=ka HTTP/1.1\r\nHost: docker\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    resp, created = read_response(reader)
    cid = json.loads(created)["Id"]
    # Pipelined: start and inspect in one write, answered in order.
    sock.sendall(b"POST /v1.41/containers/%s/start HTTP/1.1\r\nHost: docker\r\n\r\n"
                 b"GET /containers/ka/json HTTP/1.1\r\nHost: docker\r\n\r\n" % cid.encode())
    resp, _ = read_response(reader)
    assert resp.status == 204 and "Content-Length" not in dict(resp.headers)
    resp, doc = read_response(reader)
    assert json.loads(doc)["NetworkSettings"]["IPAddress"] == world.endpoints(cid)[0].ips[0]
    sock.close()


def test_chunked_request_body_is_rewritten_too(world):
    sock = raw(world.listen)
    body = json.dumps({"Env": ["CALICO_IP=auto"]}).encode()
    sock.sendall(b"POST /containers/create?name=chunky HTTP/1.1\r\nHost: d\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    resp, _ = read_response(http1.Reader(sock))
    assert resp.status == 201
    assert world.engine.find("chunky")["Body"]["HostConfig"]["NetworkMode"] == "none"
    sock.close()


def test_hijacked_attach_is_a_tunnel_with_half_close(world):
    world.engine.create("talk", [])
    sock = raw(world.listen)
    sock.sendall(b"POST /v1.41/containers/talk/attach?stream=1&stdin=1 HTTP/1.1\r\n"
                 b"Host: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    reader = http1.Reader(sock)
    resp = http1.Response.parse(reader.head())
    assert resp.status == 101
    received = reader.rest()
    sock.sendall(b"hello")
    deadline = time.monotonic() + 5
    while b"HELLO" not in received and time.monotonic() < deadline:
        received += sock.recv(100)
    sock.shutdown(socket.SHUT_WR)            # stdin closed: output still comes
    while data := sock.recv(100):
        received += data
    assert received == b"ready\nHELLObye\n"
    sock.close()


def test_tunnel_ends_when_the_engine_hangs_up_first(world):
    world.engine.create("short", [])
    sock = raw(world.listen)
    sock.sendall(b"POST /containers/short/attach?hangup=1 HTTP/1.1\r\nHost: d\r\n"
                 b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    reader = http1.Reader(sock)
    assert http1.Response.parse(reader.head()).status == 101
    received = reader.rest()
    while data := sock.recv(100):            # EOF although our side never closed
        received += data
    assert received == b"ready\n"
    deadline = time.monotonic() + 5          # and the proxy's side of the tunnel is over
    while any(t.name == "tunnel-in" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the tunnel still waits for the client"
        time.sleep(0.02)
    sock.close()


def test_streamed_response_arrives_as_the_engine_writes_it(world):
    world.engine.create("chatty", [])
    sock = raw(world.listen)
    sock.sendall(b"GET /containers/chatty/logs?follow=1 HTTP/1.1\r\nHost: d\r\n\r\n")
    reader = http1.Reader(sock)
    assert http1.Response.parse(reader.head()).status == 200
    world.engine.log_lines.put(b"line one\n")
    assert reader.line() == b"9\r\n"         # the first chunk, while the stream goes on
    assert reader.some(100).startswith(b"line one")
    world.engine.log_lines.put(None)
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")      # then the same connection
    while reader.line() != b"0\r\n":
        pass
    assert reader.line() == b"\r\n"
    assert read_response(reader)[1] == b"OK"
    sock.close()


def test_unreachable_engine_is_a_clear_502(world):
    world.engine.closing = True
    world.engine.shutdown()
    world.engine.server_close()
    os.unlink(world.upstream)
    status, body = world.docker.request("GET", "/version")
    assert status == 502
    assert body["message"].startswith(f"Cannot reach the Docker engine at {world.upstream}")


# Ownership of the socket, reconciliation ---------------------------------------------------

def test_gives_up_the_socket_when_replaced_and_takes_it_back_when_free(world):
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.unlink(world.listen)
    other.bind(world.listen)                 # e.g. the engine moved back to it
    other.listen(1)
    deadline = time.monotonic() + 5
    while world.proxy.serving.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not world.proxy.serving.is_set() and os.path.exists(world.listen)
    other.close()                            # a stale socket file: the proxy takes it again
    assert world.proxy.serving.wait(5)
    assert world.docker.request("GET", "/_ping")[0] == 200


def test_reconcile_releases_removed_and_networks_running_containers(world):
    world.run(["CALICO_IP=auto"], name="leaked")
    with world.engine.lock:                  # removed behind the proxy's back
        world.engine.remove(world.engine.find("leaked"))
    behind = world.engine.create("behind", ["CALICO_IP=10.0.0.20"], mode="none")
    world.engine.start(behind)               # started behind its back
    bridged = world.engine.create("bridged", ["CALICO_IP=auto"], mode="bridge")
    world.engine.start(bridged)              # not created through the proxy: left alone
    assert world.networking.reconcile() == {"removed": 1, "networked": 1}
    [ep] = world.manager.list()
    assert ep.workload_id == behind["Id"] and ep.ips == ["10.0.0.20"]
    assert world.networking.reconcile() == {"removed": 0, "networked": 0}


def test_watcher_follows_engine_events(world):
    Watcher(world.networking.engine, world.networking, resync=3600).start(world.stop)
    deadline = time.monotonic() + 5
    while not world.engine.subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    c = world.engine.create("restarted", ["CALICO_IP=auto"], mode="none")
    with world.engine.lock:
        world.engine.start(c)                # e.g. a restart policy
    wait = lambda cond: [time.sleep(0.05) for _ in range(100) if not cond()]  # noqa: E731
    wait(lambda: world.endpoints(c["Id"]))
    assert len(world.endpoints(c["Id"])) == 1
    with world.engine.lock:
        world.engine.remove(c)               # e.g. docker run --rm
    wait(lambda: not world.manager.list())
    assert world.manager.list() == [] and world.allocated() == 0


# Pieces -------------------------------------------------------------------------------

def test_real_socket_names():
    assert real_socket("/var/run/docker.sock") == "/var/run/docker.real.sock"
    assert real_socket("/tmp/x/engine") == "/tmp/x/engine.real"


def test_local_engine_errors_keep_their_messages(world, tmp_path):
    engine = LocalEngine(world.listen, world.upstream)
    assert engine.socket_path == world.upstream and engine.available()   # proxied
    with pytest.raises(NotFound) as caught:
        with engine.inspecting("container named nope") as client:
            client.containers.get("nope")
    assert str(caught.value) == "No Docker container named nope."
    with pytest.raises(CalicoError) as caught:
        with engine.calls("Docker could not stop container nope") as client:
            client.api.stop("nope", timeout=0)
    assert type(caught.value) is CalicoError and str(caught.value) == (
        "Docker could not stop container nope: No such container: /containers/nope/stop")
    gone = str(tmp_path / "gone.sock")
    engine = LocalEngine(gone, real_socket(gone))
    assert engine.socket_path == gone and not engine.available()
    with pytest.raises(Unavailable) as caught:
        with engine.inspecting("container named web") as client:
            client.containers.get("web")
    assert str(caught.value) == (f"Cannot reach the Docker engine at {gone}: No such file or "
                                 "directory. Is dockerd running?")


def test_what_needs_no_docker_does_not_import_the_sdk():
    """The SDK costs 60-150 ms of start-up: calicoctl imports it only for a
    command that talks to Docker, the node supervisor and CNI plugins never."""
    code = ("import sys, cli.calicoctl, cni.calico, cni.calico_ipam, node.__main__; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'docker', 'requests'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("head, method, framing", [
    (b"HTTP/1.1 204 No Content\r\n\r\n", "POST", ("none", 0)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", ("none", 0)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", ("length", 5)),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", ("chunked", 0)),
    (b"HTTP/1.1 101 UPGRADED\r\nUpgrade: tcp\r\n\r\n", "POST", ("tunnel", 0)),
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n", "POST",
     ("tunnel", 0)),
])
def test_response_framing(head, method, framing):
    assert http1.Response.parse(head).framing(method) == framing


def test_malformed_request_gets_400_and_is_closed(world):
    sock = raw(world.listen)
    sock.sendall(b"NONSENSE\r\n\r\n")
    reader = http1.Reader(sock)
    resp, body = read_response(reader)
    assert resp.status == 400 and b"malformed request line" in body
    assert sock.recv(10) == b""
    sock.close()


def test_http_client_round_trips_through_the_proxy(world):
    """The standard library's client, keep-alive across several calls."""
    conn = http.client.HTTPConnection("docker")
    conn.sock = raw(world.listen)
    for _ in range(3):
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"OK")
    conn.close()


# Switching an engine between direct and proxied ------------------------------------------

def fake_systemctl(tmp_path, exec_start="/usr/sbin/dockerd -H fd:// --containerd=/run/c.sock"):
    """A systemctl that records its calls and describes docker.service."""
    script = tmp_path / "bin" / "systemctl"
    script.parent.mkdir()
    script.write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/systemctl.calls
if [ "$1" = show ]; then echo 'ExecStart={{ path=/usr/sbin/dockerd ; argv[]={exec_start} ; }}'; fi
""")
    script.chmod(0o755)
    return tmp_path / "systemctl.calls"


def test_systemd_drop_in_moves_docker_socket_and_back(tmp_path, monkeypatch):
    from cli.docker_socket import Systemd
    calls = fake_systemctl(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    systemd = Systemd(tmp_path / "units")
    drop_in = tmp_path / "units/docker.socket.d/calico-py.conf"
    said = systemd.configure("/var/run/docker.sock", "/var/run/docker.real.sock", True)
    assert said == f"Wrote {drop_in}: docker.socket listens on /var/run/docker.real.sock."
    assert "[Socket]\nListenStream=\nListenStream=/var/run/docker.real.sock\n" in \
        drop_in.read_text()
    assert systemd.configure("/var/run/docker.sock", "/var/run/docker.real.sock", True) is None
    systemd.restart()
    assert calls.read_text().splitlines()[-3:] == [
        "daemon-reload", "stop docker.service docker.socket", "start docker.socket docker.service"]
    said = systemd.configure("/var/run/docker.sock", "/var/run/docker.real.sock", False)
    assert said == f"Removed {drop_in}: docker.socket listens on /var/run/docker.sock again."
    assert not drop_in.exists()


def test_systemd_refuses_an_engine_not_socket_activated(tmp_path, monkeypatch):
    from cli.docker_socket import Systemd
    from cli.errors import CliError
    fake_systemctl(tmp_path, exec_start="/usr/sbin/dockerd -H unix:///var/run/docker.sock")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    with pytest.raises(CliError, match=r"docker.service does not take its socket from "
                                       r"docker.socket \(no '-H fd://' in its ExecStart\)"):
        Systemd(tmp_path / "units").configure("/var/run/docker.sock", "/var/run/r.sock", True)
    assert not (tmp_path / "units").exists()


def test_daemon_json_keeps_other_settings_and_listeners(tmp_path):
    from cli.docker_socket import DaemonConfig
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"debug": True, "hosts": ["unix:///var/run/docker.sock",
                                                         "tcp://127.0.0.1:2375"]}))
    config = DaemonConfig(path, "true")
    said = config.configure("/var/run/docker.sock", "/var/run/docker.real.sock", True)
    assert json.loads(path.read_text()) == {
        "debug": True, "hosts": ["unix:///var/run/docker.real.sock", "tcp://127.0.0.1:2375"]}
    assert said.endswith('(was ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"]).')
    assert config.configure("/var/run/docker.sock", "/var/run/docker.real.sock", True) is None
    config.configure("/var/run/docker.sock", "/var/run/docker.real.sock", False)
    assert json.loads(path.read_text())["hosts"] == ["unix:///var/run/docker.sock",
                                                     "tcp://127.0.0.1:2375"]


class _Group:
    def __init__(self, gid):
        self.gr_gid = gid


def test_proxy_socket_is_root_only_unless_the_engine_serves_group_docker(tmp_path,
                                                                         monkeypatch):
    engine = tmp_path / "docker.real.sock"
    engine.touch()
    monkeypatch.setattr(proxy_module.grp, "getgrnam", lambda name: _Group(os.getgid()))
    engine.chmod(0o660)
    assert socket_access(str(engine)) == (0o660, os.getgid())
    engine.chmod(0o600)                 # the engine serves root alone: so do we
    assert socket_access(str(engine)) == (0o600, -1)
    engine.chmod(0o660)
    monkeypatch.setattr(proxy_module.grp, "getgrnam", lambda name: _Group(os.getgid() + 1))
    assert socket_access(str(engine)) == (0o600, -1)

    def no_group(name):
        raise KeyError(name)
    monkeypatch.setattr(proxy_module.grp, "getgrnam", no_group)
    assert socket_access(str(engine)) == (0o600, -1)
    assert socket_access(str(tmp_path / "missing")) == (0o600, -1)
