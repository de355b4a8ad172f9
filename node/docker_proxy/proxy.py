"""The proxy server: Docker's API on one unix socket, relayed to the engine's.

Each client connection gets its own engine connection, so keep-alive and
connection state mirror each other one to one, and its own thread (hijacked
and streaming calls may last for hours). Every request is routed on its
method and path, whatever API version prefix it has; only these are more
than relayed:

- ``POST /containers/create``: a body asking for Calico is rewritten first.
- ``POST /containers/<id>/start`` and ``/restart``: after the engine has
  started the container, Calico networks it; if that fails the container is
  stopped again and the client gets our error instead of the engine's answer.
- ``GET /containers/<id>/json``: the address fields are filled in.
- ``DELETE /containers/<id>``: once the engine has removed it, its endpoints go.

The socket is only taken when the engine answers on the upstream socket and
nobody else serves the listening one, and it is given up (standby) when
someone replaces it, e.g. an engine moved back to it. It is root's (0600: the
docker CLI of root), or 0660 root:docker when the engine's own socket serves
the group docker (``socket_access``).
"""

from __future__ import annotations

import grp
import json
import logging
import os
import re
import socket
import threading
import urllib.parse
from http import HTTPStatus

from calicopy.docker_engine import Engine
from calicopy.localfiles import SOCKET_MODE, bind_private, private_socket
from node.docker_proxy.calico_ip import ContainerNetworking, Refused
from node.docker_proxy.http1 import (ProtocolError, Reader, Request, Response, copy_body,
                                     read_body, tunnel, with_body)

log = logging.getLogger("docker-proxy")

OWNERSHIP_CHECK = 1.0       # seconds between checks that the socket is still ours

_API = r"(?:/v[0-9]+(?:\.[0-9]+)?)?"
_ROUTES = [
    ("POST", re.compile(rf"{_API}/containers/create\Z"), "_create"),
    ("POST", re.compile(rf"{_API}/containers/(?P<ref>[^/]+)/(?:start|restart)\Z"), "_start"),
    ("GET", re.compile(rf"{_API}/containers/(?P<ref>[^/]+)/json\Z"), "_inspect"),
    ("DELETE", re.compile(rf"{_API}/containers/(?P<ref>[^/]+)\Z"), "_delete"),
]


def route(req: Request) -> tuple[str, str]:
    """(handler name, container reference) for a request; "_relay" for the rest."""
    for method, pattern, handler in _ROUTES:
        if req.method == method and (m := pattern.match(req.path)):
            return handler, urllib.parse.unquote(m.groupdict().get("ref") or "")
    return "_relay", ""


def error_response(status: int, message: str) -> bytes:
    head = Response(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                    [("Content-Type", "application/json")])
    return with_body(head, json.dumps({"message": message}).encode() + b"\n")


class Session:
    """One client connection, and the engine connection that mirrors it."""

    def __init__(self, client: socket.socket, upstream_path: str,
                 networking: ContainerNetworking):
        self.client = client
        self.reader = Reader(client)
        self.upstream_path = upstream_path
        self.networking = networking
        self.upstream: socket.socket | None = None
        self.up_reader: Reader | None = None

    def run(self) -> None:
        try:
            while self._one():
                pass
        except ProtocolError as exc:
            log.warning("closing a client connection: %s", exc)
            self._send(error_response(400, f"Bad request for the Calico Docker proxy: {exc}"))
        except OSError:
            pass                                    # a side went away; nothing to tell
        except Exception as exc:                    # a bug: say so, and keep serving others
            log.exception("a client request failed")
            self._send(error_response(500, f"The Calico Docker proxy failed: {exc!r}; see "
                                           "its log."))
        finally:
            self._close_upstream()
            self.client.close()

    def _one(self) -> bool:
        """Serve one request; whether the connection goes on."""
        raw = self.reader.head()
        if raw is None:
            return False
        req = Request.parse(raw)
        if "100-continue" in req.tokens("Expect"):
            # Answered here: the client sends its body only after it, and we
            # read that body before the engine could answer.
            req.replace("Expect", None)
            self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        handler, ref = route(req)
        return getattr(self, handler)(req, ref)

    # Talking to the engine ---------------------------------------------------------

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.upstream_path)
        except OSError:
            sock.close()
            raise
        self.upstream, self.up_reader = sock, Reader(sock)

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = self.up_reader = None

    def _exchange(self, req: Request, body: bytes | None = None) -> Response | None:
        """Send ``req`` (its body relayed from the client, or ``body``) and read
        the engine's response head; None when the engine could not be reached
        (the client has had a 502 then)."""
        replayable = body is not None or req.body_framing()[0] == "none"
        for attempt in (1, 2):
            reused = self.upstream is not None
            try:
                if not reused:
                    self._connect()
                if body is None:
                    self.upstream.sendall(req.encode())
                    copy_body(self.reader, req.body_framing(), self.upstream)
                else:
                    self.upstream.sendall(with_body(req, body))
                while True:
                    raw = self.up_reader.head()
                    if raw is None:
                        raise ConnectionResetError("the engine closed the connection")
                    resp = Response.parse(raw)
                    if resp.status >= 200 or resp.status == 101:
                        return resp
                    self.client.sendall(raw)        # an interim 1xx: pass it on
            except (OSError, ProtocolError) as exc:
                self._close_upstream()
                # A kept-alive connection the engine had closed: try a fresh one.
                if reused and replayable and attempt == 1 and not isinstance(exc, ProtocolError):
                    continue
                self.client.sendall(error_response(
                    502, f"Cannot reach the Docker engine at {self.upstream_path} through the "
                         f"Calico proxy: {exc}. Is dockerd running?"))
                return None
        return None

    def _finish(self, req: Request, resp: Response) -> bool:
        if req.keep_alive() and resp.keep_alive():
            return True
        self._close_upstream()
        return False

    def _send(self, data: bytes) -> None:
        try:
            self.client.sendall(data)
        except OSError:
            pass

    # Handlers: each serves one request and says whether the connection goes on -------

    def _relay(self, req: Request, ref: str = "", body: bytes | None = None) -> bool:
        resp = self._exchange(req, body)
        if resp is None:
            return False
        framing = resp.framing(req.method)
        self.client.sendall(resp.encode())
        if framing[0] == "tunnel":
            upstream, self.upstream = self.upstream, None
            tunnel(self.client, self.reader.rest(), upstream, self.up_reader.rest())
            upstream.close()
            return False
        copy_body(self.up_reader, framing, self.client)
        return self._finish(req, resp)

    def _buffered(self, req: Request) -> tuple[Response | None, bytes]:
        """Send ``req``; the engine's whole answer (JSON), to look at before relaying."""
        resp = self._exchange(req)
        if resp is None:
            return None, b""
        framing = resp.framing(req.method)
        if framing[0] == "tunnel":
            raise ProtocolError(f"unexpected stream in answer to {req.method} {req.path}")
        return resp, read_body(self.up_reader, framing)

    def _answer(self, req: Request, resp: Response, body: bytes) -> bool:
        if resp.framing(req.method)[0] == "none":
            self.client.sendall(resp.encode())
        else:
            self.client.sendall(with_body(resp, body))
        return self._finish(req, resp)

    def _refuse(self, req: Request, exc: Refused) -> bool:
        self.client.sendall(error_response(exc.status, str(exc)))
        return req.keep_alive()

    def _create(self, req: Request, ref: str) -> bool:
        body = read_body(self.reader, req.body_framing())
        try:
            doc = json.loads(body or b"{}")
            if isinstance(doc, dict) and self.networking.prepare_create(doc):
                body = json.dumps(doc).encode()
        except ValueError:
            pass                                    # not JSON: the engine will say so
        except Refused as exc:
            return self._refuse(req, exc)
        return self._relay(req, body=body)

    def _start(self, req: Request, ref: str) -> bool:
        resp, body = self._buffered(req)
        if resp is None:
            return False
        if 200 <= resp.status < 300 or resp.status == 304:   # 304: it was running already
            try:
                self.networking.ensure(ref, stop_on_failure=True)
            except Refused as exc:
                self._finish(req, resp)
                return self._refuse(req, exc)
        return self._answer(req, resp, body)

    def _inspect(self, req: Request, ref: str) -> bool:
        resp, body = self._buffered(req)
        if resp is None:
            return False
        if resp.status == 200:
            try:
                doc = json.loads(body)
                if isinstance(doc, dict) and self.networking.describe(doc):
                    body = json.dumps(doc).encode()
            except ValueError:
                pass
        return self._answer(req, resp, body)

    def _delete(self, req: Request, ref: str) -> bool:
        cid = self.networking.container_id(ref) if ref else None
        resp, body = self._buffered(req)
        if resp is None:
            return False
        if cid and 200 <= resp.status < 300:
            try:
                self.networking.release(cid)
            except Exception as exc:                # the removal happened; reconcile retries
                log.warning("releasing the addresses of container %s failed: %s", cid[:12], exc)
        return self._answer(req, resp, body)


def socket_access(engine_socket: str) -> tuple[int, int]:
    """(mode, group) of the proxy's socket: root's alone (0600), unless the
    engine's own socket lets the group ``docker`` in (root:docker, group
    read-write, as dockerd makes it when that group exists): then its members
    keep using ``docker`` through the proxy (0660 root:docker). They could
    already drive the engine itself, so this gives them nothing more."""
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
        st = os.stat(engine_socket)
    except (KeyError, OSError):
        return SOCKET_MODE, -1
    if st.st_gid == docker_gid and st.st_mode & 0o060 == 0o060:
        return 0o660, docker_gid
    return SOCKET_MODE, -1


class DockerProxy:
    """Serves ``listen`` for the engine on ``upstream`` while it may."""

    def __init__(self, listen: str, upstream: str, networking: ContainerNetworking,
                 check_every: float = OWNERSHIP_CHECK):
        self.listen = listen
        self.upstream = upstream
        self.networking = networking
        self.check_every = check_every
        self.engine = Engine(upstream, timeout=2)      # only asked whether it answers
        self.serving = threading.Event()

    def _listen_free(self) -> bool:
        """Nobody answers on the listening path (missing, or a stale socket)."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.listen)
            return False
        except (FileNotFoundError, ConnectionRefusedError):
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def _bind(self) -> socket.socket:
        if os.path.exists(self.listen):
            os.unlink(self.listen)                  # stale: checked by _listen_free
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bind_private(server, self.listen)
        mode, gid = socket_access(self.upstream)
        if mode != SOCKET_MODE:
            private_socket(self.listen, mode, gid)
        server.listen(128)
        server.settimeout(self.check_every)
        return server

    def settled(self) -> bool:
        """Serving, or standing by for good reason (the engine is not on the
        alternative socket, or someone else serves ours): what readiness means."""
        return self.serving.is_set() or not (self.engine.available() and self._listen_free())

    def serve(self, stop: threading.Event) -> None:
        waiting_logged = False
        while not stop.is_set():
            if not (self.engine.available() and self._listen_free()):
                if not waiting_logged:
                    log.info("standing by: serving %s once the engine answers on %s and "
                             "nobody else serves %s", self.listen, self.upstream, self.listen)
                    waiting_logged = True
                stop.wait(self.check_every)
                continue
            waiting_logged = False
            server = self._bind()
            inode = os.stat(self.listen).st_ino
            log.info("serving the Docker API on %s for the engine on %s", self.listen,
                     self.upstream)
            self.serving.set()
            try:
                self._accept(server, inode, stop)
            finally:
                self.serving.clear()
                server.close()
                if self._is_ours(inode):
                    os.unlink(self.listen)

    def _is_ours(self, inode: int) -> bool:
        try:
            return os.stat(self.listen).st_ino == inode
        except FileNotFoundError:
            return False

    def _accept(self, server: socket.socket, inode: int, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                if not self._is_ours(inode):
                    log.info("%s was taken over by someone else; standing by", self.listen)
                    return
                continue
            conn.settimeout(None)
            session = Session(conn, self.upstream, self.networking)
            threading.Thread(target=session.run, name="docker-proxy-session",
                             daemon=True).start()
