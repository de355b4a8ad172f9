"""Just enough HTTP/1.1 to relay the Docker API from one socket to another.

Messages are relayed, not re-encoded: a head is parsed for routing and
framing and then sent on as received (unless a handler rewrites it), and a
body is copied piece by piece as it arrives, so that streams (``logs -f``,
``events``, ``wait``, ``stats``) reach the client as the engine writes them.
A connection that changes protocol (``attach`` and ``exec start``: ``101
UPGRADED``, or Docker's older ``200`` raw stream with no framing) becomes a
two-way tunnel until it closes.

Each body is consumed exactly as its framing says, so on a keep-alive
connection the next request is parsed, and routed, like the first one.
"""

from __future__ import annotations

import dataclasses
import socket
import threading

MAX_HEAD = 64 * 1024
MAX_BUFFERED_BODY = 16 * 1024 * 1024    # what a handler may read whole (JSON)
CHUNK = 64 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not HTTP/1.x as we relay it."""


class Reader:
    """Reads from a socket through a buffer, so that bytes read past the end
    of a head stay available for the body or a tunnel."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(CHUNK)
        self.buf += data
        return bool(data)

    def head(self) -> bytes | None:
        """The next head (through its blank line); None at a clean end of stream."""
        while self.buf[:2] == b"\r\n":          # tolerated between messages
            del self.buf[:2]
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end + 4])
                del self.buf[:end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise ProtocolError("message head too large")
            if not self._fill():
                if self.buf.strip():
                    raise ProtocolError("connection closed in the middle of a message head")
                return None

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise ProtocolError("line too long")
            if not self._fill():
                raise ProtocolError("connection closed in the middle of a chunked body")
        line = bytes(self.buf[:end + 2])
        del self.buf[:end + 2]
        return line

    def some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes, at least one unless the stream ended."""
        if not self.buf and not self._fill():
            raise ProtocolError("connection closed in the middle of a body")
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data

    def rest(self) -> bytes:
        """Whatever is buffered (handed over to a tunnel)."""
        data = bytes(self.buf)
        self.buf.clear()
        return data


@dataclasses.dataclass
class Head:
    """A request or status line and its headers, in order, as received."""

    start: str
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> "Head":
        lines = raw.decode("latin-1").split("\r\n")
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"malformed header line {line[:80]!r}")
            headers.append((name, value.strip()))
        return cls(lines[0], headers)

    def get(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in (self.get(name) or "").split(",") if t.strip()}

    def replace(self, name: str, value: str | None) -> None:
        """Set one header (or, with None, remove it)."""
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))

    def encode(self) -> bytes:
        lines = [self.start] + [f"{n}: {v}" for n, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @property
    def version(self) -> str:
        return (self.start.split(" ", 1)[0] if self.start.startswith("HTTP/")
                else self.start.rsplit(" ", 1)[-1])

    def keep_alive(self) -> bool:
        connection = self.tokens("Connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def body_framing(self) -> tuple[str, int]:
        """("chunked", 0), ("length", n) or ("none", 0) as far as the headers
        say; a response's caller decides what "none" means for it."""
        coding = self.tokens("Transfer-Encoding")
        if coding:
            if (self.get("Transfer-Encoding") or "").lower().rstrip().endswith("chunked"):
                return "chunked", 0
            raise ProtocolError(f"unsupported Transfer-Encoding {self.get('Transfer-Encoding')}")
        length = self.get("Content-Length")
        if length is not None:
            if not length.strip().isdigit():
                raise ProtocolError(f"bad Content-Length {length!r}")
            return "length", int(length)
        return "none", 0


@dataclasses.dataclass
class Request(Head):
    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def target(self) -> str:
        parts = self.start.split(" ")
        return parts[1] if len(parts) == 3 else ""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @classmethod
    def parse(cls, raw: bytes) -> "Request":
        head = Head.parse(raw)
        parts = head.start.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            raise ProtocolError(f"malformed request line {head.start[:80]!r}")
        return cls(head.start, head.headers)


@dataclasses.dataclass
class Response(Head):
    @property
    def status(self) -> int:
        return int(self.start.split(" ")[1])

    @classmethod
    def parse(cls, raw: bytes) -> "Response":
        head = Head.parse(raw)
        parts = head.start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"malformed status line {head.start[:80]!r}")
        return cls(head.start, head.headers)

    def framing(self, request_method: str) -> tuple[str, int]:
        """How this response's body ends: RFC 9112 section 6.3, plus "tunnel"
        for a connection that has stopped being HTTP."""
        if self.status == 101:
            return "tunnel", 0
        if request_method == "HEAD" or 100 <= self.status < 200 or self.status in (204, 304):
            return "none", 0
        kind, length = self.body_framing()
        # No framing: the body runs until the engine closes, and the client
        # may write meanwhile (Docker's hijacked attach without Upgrade).
        return ("tunnel", 0) if kind == "none" else (kind, length)


def copy_body(reader: Reader, framing: tuple[str, int], out: socket.socket) -> None:
    """Relay one body as it arrives."""
    kind, length = framing
    if kind == "length":
        while length:
            data = reader.some(min(length, CHUNK))
            out.sendall(data)
            length -= len(data)
    elif kind == "chunked":
        while True:
            size_line = reader.line()
            out.sendall(size_line)
            size = _chunk_size(size_line)
            if size == 0:
                while True:                      # trailers, then the blank line
                    line = reader.line()
                    out.sendall(line)
                    if line == b"\r\n":
                        return
            remaining = size + 2                 # the data and its CRLF
            while remaining:
                data = reader.some(min(remaining, CHUNK))
                out.sendall(data)
                remaining -= len(data)


def read_body(reader: Reader, framing: tuple[str, int]) -> bytes:
    """A whole body, de-chunked (for handlers that rewrite JSON)."""
    kind, length = framing
    if kind == "length":
        if length > MAX_BUFFERED_BODY:
            raise ProtocolError(f"body of {length} bytes is too large to rewrite")
        data = bytearray()
        while len(data) < length:
            data += reader.some(length - len(data))
        return bytes(data)
    if kind == "chunked":
        data = bytearray()
        while size := _chunk_size(reader.line()):
            if len(data) + size > MAX_BUFFERED_BODY:
                raise ProtocolError("chunked body too large to rewrite")
            chunk = bytearray()
            while len(chunk) < size + 2:
                chunk += reader.some(size + 2 - len(chunk))
            data += chunk[:size]
        while reader.line() != b"\r\n":
            pass
        return bytes(data)
    return b""


def _chunk_size(line: bytes) -> int:
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None


def with_body(head: Head, body: bytes) -> bytes:
    """``head`` re-framed for ``body`` (Content-Length, no chunking), then the body."""
    head.replace("Transfer-Encoding", None)
    head.replace("Content-Length", str(len(body)))
    return head.encode() + body


def tunnel(client: socket.socket, client_pending: bytes,
           upstream: socket.socket, upstream_pending: bytes) -> None:
    """Relay both ways until the engine's side ends.

    The client's end of input (stdin closed) is passed on as a half-close and
    output keeps flowing; when the engine's output ends the session is over,
    and the client's side is shut down too so that neither direction waits
    for ever.
    """
    def pump(src, dst, pending):
        try:
            if pending:
                dst.sendall(pending)
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(dst, socket.SHUT_WR)

    inbound = threading.Thread(target=pump, args=(client, upstream, client_pending),
                               name="tunnel-in", daemon=True)
    inbound.start()
    pump(upstream, client, upstream_pending)
    _shutdown(client, socket.SHUT_RD)            # wakes the inbound pump
    _shutdown(upstream, socket.SHUT_RDWR)
    inbound.join()


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass
