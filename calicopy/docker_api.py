"""A small client of the Docker engine API over its unix socket.

Only what calico-py needs (inspect, list and stop containers, inspect
networks, follow events), with the standard library: importing the Docker SDK
would cost the CLI and the plugin more start-up time than every call they make.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Iterator

from calicopy import config
from calicopy.errors import CalicoError, NotFound, Unavailable

API_VERSION = "v1.41"   # Docker 20.10; newer engines accept it too


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerEngine:
    """One engine, named by its socket path (default: DOCKER_HOST)."""

    def __init__(self, socket_path: str | None = None, timeout: float = 10):
        self.socket_path = socket_path or config.DOCKER_HOST.resolve()
        self.timeout = timeout

    def request(self, method: str, path: str, body=None) -> tuple[int, object]:
        """(status, decoded JSON or None). Raises Unavailable when the engine
        cannot be reached."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, f"/{API_VERSION}{path}", body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as exc:
            raise Unavailable(f"Cannot reach the Docker engine at {self.socket_path}: "
                              f"{exc.strerror or exc}. Is dockerd running?") from None
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, {"message": raw.decode(errors="replace").strip()}

    def available(self) -> bool:
        try:
            return self.request("GET", "/_ping")[0] == 200
        except Unavailable:
            return False

    def _inspect(self, path: str, what: str) -> dict:
        status, body = self.request("GET", path)
        if status == 404:
            raise NotFound(f"No Docker {what}.")
        if status != 200:
            message = body.get("message", "") if isinstance(body, dict) else ""
            raise CalicoError(f"Docker could not inspect {what}: {message or status}")
        return body

    def container(self, name: str) -> dict:
        """``docker inspect`` of a container, by name or (short) id."""
        quoted = urllib.parse.quote(name, safe="")
        return self._inspect(f"/containers/{quoted}/json", f"container named {name}")

    def network(self, name: str) -> dict:
        """``docker network inspect``, by name or id."""
        quoted = urllib.parse.quote(name, safe="")
        return self._inspect(f"/networks/{quoted}", f"network named {name}")

    def containers(self, running_only: bool = False) -> list[dict]:
        """``docker ps [-a]``: one summary per container (Id, Names, State,
        HostConfig.NetworkMode...)."""
        status, body = self.request("GET", "/containers/json" + ("" if running_only else "?all=1"))
        if status != 200 or not isinstance(body, list):
            raise CalicoError(f"Docker could not list containers: {_message(body) or status}")
        return body

    def stop(self, name: str, timeout: int = 0) -> None:
        """``docker stop -t <timeout>``; a container already stopped is fine."""
        quoted = urllib.parse.quote(name, safe="")
        status, body = self.request("POST", f"/containers/{quoted}/stop?t={timeout}")
        if status not in (204, 304):
            raise CalicoError(f"Docker could not stop container {name}: "
                              f"{_message(body) or status}")

    def events(self, filters: dict[str, list[str]], since: int = 0) -> Iterator[dict]:
        """Follow ``docker events`` matching ``filters`` (from the unix time
        ``since``, when given) until the engine closes the stream (the caller
        reconnects); no timeout while waiting."""
        params = {"filters": json.dumps(filters)}
        if since:
            params["since"] = str(since)
        query = urllib.parse.urlencode(params)
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            try:
                conn.request("GET", f"/{API_VERSION}/events?{query}")
                resp = conn.getresponse()
            except OSError as exc:
                raise Unavailable(f"Cannot reach the Docker engine at {self.socket_path}: "
                                  f"{exc.strerror or exc}. Is dockerd running?") from None
            if resp.status != 200:
                raise CalicoError(f"Docker refused to stream events: {resp.status}")
            conn.sock.settimeout(None)      # events may be minutes apart
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException):
                    return
                if not line:
                    return
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
        finally:
            conn.close()


def _message(body) -> str:
    return body.get("message", "") if isinstance(body, dict) else ""


def real_socket(public: str) -> str:
    """Where the engine listens while proxied: ``/var/run/docker.sock`` ->
    ``/var/run/docker.real.sock`` (any other name gets ``.real`` before its
    extension)."""
    folder, name = os.path.split(public)
    stem, dot, ext = name.rpartition(".")
    return os.path.join(folder, f"{stem}.real.{ext}" if dot and stem else f"{name}.real")


class LocalEngine:
    """This node's engine wherever it listens now: on the alternative socket
    while proxied (that socket exists), else on the usual one."""

    def __init__(self, public: str, real: str, timeout: float = 10):
        self.public, self.real, self.timeout = public, real, timeout

    @property
    def socket_path(self) -> str:
        return self.real if os.path.exists(self.real) else self.public

    def _engine(self) -> DockerEngine:
        return DockerEngine(self.socket_path, self.timeout)

    def container(self, name: str) -> dict:
        return self._engine().container(name)

    def containers(self, running_only: bool = False) -> list[dict]:
        return self._engine().containers(running_only)

    def stop(self, name: str, timeout: int = 0) -> None:
        self._engine().stop(name, timeout)

    def events(self, filters: dict, since: int = 0):
        return self._engine().events(filters, since)

    def network(self, name: str) -> dict:
        return self._engine().network(name)

    def available(self) -> bool:
        return self._engine().available()
