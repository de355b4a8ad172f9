"""This node's Docker engine, reached with the Docker SDK (the ``docker`` package).

Callers make the SDK calls themselves; this module owns what the SDK does not
know about calico-py:

- which socket: ``Engine`` is one socket (default DOCKER_HOST);
  ``LocalEngine`` is this node's engine wherever it listens now, on the
  alternative socket (``real_socket``) while the Calico proxy serves the usual
  one;
- the client for a socket, with the API version fixed so that building it asks
  the engine nothing;
- the project's errors for the SDK's failures (``Engine.calls``), with the
  messages users see.

``docker`` (and with it ``requests``) is imported on first use: it adds 60-150
ms to a process's start, which commands that never talk to Docker do not pay.
The CNI plugin never imports this module.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Iterator

from calicopy import config
from calicopy.errors import CalicoError, NotFound, Unavailable

if TYPE_CHECKING:
    import docker

API_VERSION = "1.41"   # Docker 20.10 (Debian 12's docker.io)


def real_socket(public: str) -> str:
    """Where the engine listens while proxied: ``/var/run/docker.sock`` ->
    ``/var/run/docker.real.sock`` (any other name gets ``.real`` before its
    extension)."""
    folder, name = os.path.split(public)
    stem, dot, ext = name.rpartition(".")
    return os.path.join(folder, f"{stem}.real.{ext}" if dot and stem else f"{name}.real")


def client(socket_path: str, timeout: float = 10) -> docker.DockerClient:
    """An SDK client of the engine on this unix socket."""
    import docker
    return docker.DockerClient(base_url=f"unix://{socket_path}", version=API_VERSION,
                               timeout=timeout)


@contextlib.contextmanager
def translated(socket_path: str, failed: str, missing: str | None = None) -> Iterator[None]:
    """The SDK's failures inside, as the project's errors: Unavailable when
    the engine on ``socket_path`` cannot be reached (or a stream from it
    breaks); NotFound(``missing``), when given, if what was named does not
    exist; else CalicoError("<failed>: <the engine's message, or its status>")."""
    import docker.errors
    import urllib3.exceptions
    try:
        yield
    except docker.errors.NotFound as exc:
        if missing is not None:
            raise NotFound(missing) from None
        raise CalicoError(f"{failed}: {exc.explanation or exc.status_code}") from None
    except docker.errors.APIError as exc:
        raise CalicoError(f"{failed}: {exc.explanation or exc.status_code}") from None
    # requests' errors are OSErrors; urllib3's, met reading a stream, are not.
    except (OSError, urllib3.exceptions.HTTPError, docker.errors.DockerException,
            docker.errors.StreamParseError) as exc:
        raise Unavailable(f"Cannot reach the Docker engine at {socket_path}: {_reason(exc)}. "
                          "Is dockerd running?") from None


class Engine:
    """One engine, named by its socket path (default: DOCKER_HOST). Its SDK
    client is made on first use and kept (with its connections) for later
    calls; it may be shared by threads."""

    def __init__(self, socket_path: str | None = None, timeout: float = 10):
        self._socket_path = socket_path or config.DOCKER_HOST.resolve()
        self.timeout = timeout
        self._clients: dict[str, docker.DockerClient] = {}
        self._guard = threading.Lock()

    @property
    def socket_path(self) -> str:
        return self._socket_path

    def client(self) -> docker.DockerClient:
        """The SDK client for the socket the engine listens on now."""
        path = self.socket_path
        with self._guard:
            if path not in self._clients:
                self._clients[path] = client(path, self.timeout)
            return self._clients[path]

    @contextlib.contextmanager
    def calls(self, failed: str, missing: str | None = None) -> Iterator[docker.DockerClient]:
        """The client, for SDK calls whose failures become the project's
        errors (see ``translated``)."""
        with translated(self.socket_path, failed, missing):
            yield self.client()

    def inspecting(self, what: str) -> contextlib.AbstractContextManager[docker.DockerClient]:
        """``calls`` for looking up ``what`` (e.g. "container named web1")."""
        return self.calls(f"Docker could not inspect {what}", missing=f"No Docker {what}.")

    def available(self) -> bool:
        """Whether the engine answers; no socket file, no engine (and no SDK
        import). With a client of its own, closed at once: callers ask once."""
        path = self.socket_path
        if not os.path.exists(path):
            return False
        probe = client(path, self.timeout)
        try:
            with translated(path, "Docker did not answer a ping"):
                return probe.ping()
        except CalicoError:
            return False
        finally:
            probe.close()


class LocalEngine(Engine):
    """This node's engine wherever it listens now: on the alternative socket
    while proxied (that socket exists), else on the usual one."""

    def __init__(self, public: str, real: str, timeout: float = 10):
        super().__init__(public, timeout)
        self.public, self.real = public, real

    @property
    def socket_path(self) -> str:
        return self.real if os.path.exists(self.real) else self.public


def _reason(exc: BaseException) -> str:
    """What went wrong under the SDK's wrappers: the socket's own error
    ("No such file or directory", "Connection refused") when there is one."""
    import requests.exceptions
    import urllib3.exceptions
    timeouts = (TimeoutError, requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, timeouts):
            return "timed out"
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        # requests and urllib3 keep the error they wrap in args or .reason.
        todo += [a for a in (*e.args, getattr(e, "reason", None), e.__cause__, e.__context__)
                 if isinstance(a, BaseException)]
    return str(exc)
