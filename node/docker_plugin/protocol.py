"""Docker's plugin protocol: JSON over HTTP POST on a unix socket.

Each request names a method (``/NetworkDriver.Join``); the body is a JSON
object and so is the answer. A failure is ``{"Err": "<message>"}``, which
Docker shows to the user as is; an unknown method gets 404, which Docker takes
as "not implemented". The socket is root's alone (0600): Docker's engine runs
as root, and anyone else who could call the plugin could network containers.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import time
from http.server import BaseHTTPRequestHandler
from typing import Callable

from calicopy import logs, metrics
from calicopy.errors import CalicoError
from calicopy.localfiles import bind_private

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

Handler = Callable[[dict], dict]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    methods: dict[str, Handler] = {}

    def server_bind(self) -> None:
        # Docker (root) is the only client: root-only from the start.
        bind_private(self.socket, self.server_address)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self):     # noqa: N802 (the name http.server looks for)
        # Each request from Docker enters calico-py here: its request id is
        # made here and goes with every call the handler makes (calicopy.logs).
        method = self.path.lstrip("/")
        known = method in self.server.methods
        start, self._status = time.monotonic(), 0
        with logs.request():
            try:
                self._post(method)
            finally:
                name = method if known else "unknown"
                metrics.DOCKER_PLUGIN_REQUESTS.inc(method=name, status=str(self._status))
                metrics.DOCKER_PLUGIN_SECONDS.observe(time.monotonic() - start, method=name)

    def _post(self, method: str) -> None:
        handler = self.server.methods.get(method)
        try:
            # Read the body even for a method we refuse: a client still
            # sending it would otherwise get a broken pipe instead of the 404.
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        except ValueError:
            return self._reply(400, {"Err": f"{method}: malformed Content-Length."})
        if handler is None:
            return self._reply(404, {"Err": f"{method} is not implemented by calico-py."})
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            return self._reply(400, {"Err": f"{method}: malformed request: {exc}."})
        try:
            answer = handler(body)
        except CalicoError as exc:
            log.warning("%s failed: %s", method, exc)
            return self._reply(500, {"Err": str(exc)})
        except Exception as exc:   # a bug: say so, but keep serving
            log.exception("%s failed", method)
            return self._reply(500, {"Err": f"calico-py plugin error in {method}: {exc}"})
        log.info("%s ok", method)
        self._reply(200, answer)

    def _reply(self, status: int, body: dict) -> None:
        self._status = status
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):   # requests are logged above, once
        pass


def serve(path: str, methods: dict[str, Handler]) -> _Server:
    """A server on ``path`` (replacing a stale socket); call serve_forever()."""
    if os.path.exists(path):
        os.unlink(path)
    server = _Server(path, _RequestHandler)
    server.methods = methods
    return server
