"""Configuration parameters, declared once.

Each parameter has a name, a meaning, a default and the environment variables
it is read from. A value is resolved in this order: an explicit value (a
command-line flag), then the environment variables in the order listed, then
the default. A bad value raises ConfigError naming the parameter, the value
and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any, Callable, Mapping

from calicopy.node_paths import NodePaths, json_socket


class ConfigError(ValueError):
    pass


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port``. A unix socket that etcd created is named ``<name>:<port>``,
    so ``unix:<dir>/<name>:<port>`` parses too, with the ``unix:`` part in host."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{text}' is not host:port")
    return host.strip("[]"), int(port)


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]``; an ``http://`` scheme is tolerated."""
    items = [t.strip().removeprefix("http://") for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("no endpoint given")
    return [parse_hostport(t) for t in items]


def parse_address(text: str) -> str:
    """A gRPC target: ``host:port`` or ``unix:/absolute/path``."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:"):].lstrip("/")
        if not path:
            raise ValueError(f"'{text}' names no socket path")
        return "unix:/" + path
    host, port = parse_hostport(text)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_unix_socket(text: str) -> str:
    """``unix:<path>`` (also ``unix:///path``, as Docker writes it) or a bare path."""
    text = text.strip()
    path = text[len("unix://"):] if text.startswith("unix://") else text.removeprefix("unix:")
    if not path.startswith("/"):
        raise ValueError("give a unix socket as unix:///absolute/path")
    return path


def parse_addresses(text: str) -> list[str]:
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("no address given")
    return [parse_address(t) for t in items]


def parse_name(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 253 or not all(c.isalnum() or c in "._-" for c in text):
        raise ValueError("use 1-253 letters, digits, '.', '-' or '_'")
    return text


def parse_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("must be an absolute path")
    return text.rstrip("/") or "/"


def parse_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    meaning: str
    default: str
    env: tuple[str, ...]
    parse: Callable[[str], Any] = str

    def resolve(self, explicit: str | None = None,
                environ: Mapping[str, str] | None = None) -> Any:
        environ = os.environ if environ is None else environ
        if explicit is not None:
            raw, source = explicit, "command line"
        else:
            found = [(environ[e], f"environment variable {e}") for e in self.env
                     if environ.get(e)]
            raw, source = found[0] if found else (self.default, "default")
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"Invalid {self.name} '{raw}' (from {source}): {exc}") from None


ETCD_ENDPOINTS = Param(
    "etcd endpoints", "comma-separated host:port list of etcd v3 servers",
    "127.0.0.1:2379", ("ETCD_ENDPOINTS", "ETCD_AUTHORITY"), parse_endpoints)

IPAM_ADDR = Param(
    "IPAM service address", "host:port or unix:<path> of the IPAM service",
    "127.0.0.1:50051", ("CALICO_IPAM_ADDR",), parse_address)

IPAM_LISTEN = Param(
    "IPAM listen addresses", "comma-separated addresses the IPAM service serves on",
    "127.0.0.1:50051", ("CALICO_IPAM_LISTEN", "CALICO_IPAM_ADDR"), parse_addresses)

BGP_ADDR = Param(
    "BGP service address", "host:port or unix:<path> of the BGP service",
    "127.0.0.1:50053", ("CALICO_BGP_ADDR",), parse_address)

BGP_LISTEN = Param(
    "BGP listen addresses", "comma-separated addresses the BGP service serves on",
    "127.0.0.1:50053", ("CALICO_BGP_LISTEN", "CALICO_BGP_ADDR"), parse_addresses)

POLICY_ADDR = Param(
    "policy service address", "host:port or unix:<path> of the policy service",
    "127.0.0.1:50052", ("CALICO_POLICY_ADDR",), parse_address)

POLICY_LISTEN = Param(
    "policy listen addresses", "comma-separated addresses the policy service serves on",
    "127.0.0.1:50052", ("CALICO_POLICY_LISTEN", "CALICO_POLICY_ADDR"), parse_addresses)

STATE_DIR = Param(
    "state directory", "where node processes keep sockets, pids and logs",
    "/var/run/calico-py", ("CALICO_STATE_DIR",), parse_path)

NODENAME = Param(
    "node name", "this host's name in calico-py (must be unique per host)",
    socket.gethostname(), ("CALICO_NODENAME", "NODENAME"), parse_name)

ENDPOINT_ADDR = Param(
    "endpoint service address",
    "host:port or unix:<path> of this node's endpoint service",
    "unix:<state directory>/<node name>/endpoint.sock", ("CALICO_ENDPOINT_ADDR",),
    parse_address)

RPC_TIMEOUT = Param(
    "RPC timeout", "deadline in seconds for each call to a calico-py service",
    "10", ("CALICO_RPC_TIMEOUT",), parse_seconds)

DOCKER_HOST = Param(
    "Docker engine socket", "unix:<path> of the Docker engine API this node serves",
    "unix:/var/run/docker.sock", ("DOCKER_HOST",), parse_unix_socket)

DOCKER_PLUGIN_DIR = Param(
    "Docker plugin folder", "where the node puts the Docker plugin socket (calico.sock)",
    "/run/docker/plugins", ("CALICO_DOCKER_PLUGIN_DIR",), parse_path)

#: The Docker plugin's socket in DOCKER_PLUGIN_DIR (Docker finds plugins by file name).
DOCKER_PLUGIN_SOCKET = "calico.sock"

PARAMS = (ETCD_ENDPOINTS, IPAM_ADDR, POLICY_ADDR, BGP_ADDR, NODENAME, STATE_DIR, ENDPOINT_ADDR,
          RPC_TIMEOUT, DOCKER_HOST, DOCKER_PLUGIN_DIR)


def node_paths(node: str | None = None, environ: Mapping[str, str] | None = None
               ) -> NodePaths:
    """The state folder layout of ``node`` (default: this node)."""
    node = node or NODENAME.resolve(environ=environ)
    return NodePaths(STATE_DIR.resolve(environ=environ), node)


def endpoint_addr(explicit: str | None = None, node: str | None = None,
                  environ: Mapping[str, str] | None = None) -> str:
    """The endpoint service of ``node`` (default: this node)."""
    environ = os.environ if environ is None else environ
    if explicit is not None or environ.get("CALICO_ENDPOINT_ADDR"):
        return ENDPOINT_ADDR.resolve(explicit, environ)
    return node_paths(node, environ).endpoint_addr


def endpoint_json_socket(addr: str) -> str | None:
    """The unix socket on which the endpoint service whose gRPC address is
    ``addr`` also serves its RPCs as JSON (services/endpoint/json_gateway.py):
    next to the gRPC socket (calicopy.node_paths.json_socket). None for a
    ``host:port`` address: the JSON mapping is for local clients, on unix
    sockets only."""
    if not addr.strip().startswith("unix:"):
        return None
    return json_socket(parse_unix_socket(addr))


def describe() -> str:
    """A help paragraph listing every parameter and its environment variables."""
    lines = []
    for p in PARAMS:
        lines.append(f"  {' or '.join(p.env):<32} {p.meaning} (default {p.default})")
    return "\n".join(lines)
