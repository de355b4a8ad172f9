"""The endpoint service's local faces (the JSON gateway, the CNI socket):
a threaded server on a root-only unix socket.

It binds (replacing a socket a previous run left), serves in a thread, and
stops gracefully: once stopping, no request is counted in any more, and the
stop waits (up to its grace) for those in flight. A request handler reaches
its server's owner as ``self.server.owner`` and brackets its work with
``owner.enter()`` / ``owner.leave()``.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import struct
import sys
import threading

from calicopy.localfiles import bind_private

log = logging.getLogger(__name__)

# The accept loop's select timeout. A stop does not wait for it: it shuts the
# listening socket down, which wakes the loop at once (a short poll cost an
# idle node ten wake-ups a second per socket).
POLL = 30.0


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process that connected ``conn`` (a unix socket)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class LocalSocketServer:
    """Serves ``handler`` (a socketserver request handler class) on ``path``;
    ``name`` names its thread and its log lines."""

    handler: type
    name: str

    def __init__(self, path: str):
        self.path = path
        self._idle = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._server: _Server | None = None

    def start(self) -> None:
        """Bind (replacing a socket a previous run left) and serve in a thread."""
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._stopping = False
        self._server = _Server(self.path, self.handler)
        self._server.owner = self
        threading.Thread(target=self._server.serve_forever, args=(POLL,), name=self.name,
                         daemon=True).start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace``
        seconds, then close and remove the socket."""
        if self._server is None:
            return
        self._stopping = True       # kept-alive connections get no more requests
        server = self._server
        closer = threading.Thread(target=server.shutdown, daemon=True)
        closer.start()
        while closer.is_alive():
            try:
                server.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            closer.join(0.05)
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=grace)
        self._server.server_close()
        self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def enter(self) -> bool:
        """Count a request in; False once stopping."""
        with self._idle:
            if self._stopping:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True       # an idle kept-alive connection must not hold up a stop
    owner: LocalSocketServer

    def server_bind(self) -> None:
        bind_private(self.socket, self.server_address)

    def handle_error(self, request, client_address) -> None:
        # In the log, not on stderr (socketserver's default); a client gone or
        # too slow mid-request needs no traceback.
        exc = sys.exc_info()[1]
        log.warning("%s request dropped: %r", self.owner.name, exc,
                    exc_info=not isinstance(exc, OSError))
