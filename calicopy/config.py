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

from calicopy.node_paths import NodePaths, cni_socket, json_socket


class ConfigError(ValueError):
    pass


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port``. A unix socket that etcd created is named ``<name>:<port>``,
    so ``unix:<dir>/<name>:<port>`` parses too, with the ``unix:`` part in host."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{text}' is not host:port")
    return host.strip("[]"), int(port)


@dataclasses.dataclass(frozen=True)
class EtcdEndpoint:
    """One etcd member's client URL: ``https://host:port`` (TLS), ``http://host:port``
    or a bare ``host:port`` (plaintext), or a unix socket etcd created
    (named ``<name>:<port>``): ``unixs:<path>`` (TLS) or ``unix:<path>``."""

    scheme: str          # https, http, unixs or unix
    host: str            # for unix sockets: "unix:<dir>/<name>"
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "unixs")

    def __str__(self) -> str:
        if self.scheme in ("unix", "unixs"):
            return f"{self.scheme}:{self.host[len('unix:'):]}:{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        # Plaintext as the original tool named it (host:port); TLS with its scheme.
        return f"https://{host}:{self.port}" if self.tls else f"{host}:{self.port}"


def parse_endpoint(text: str) -> EtcdEndpoint:
    text = text.strip()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            host, port = parse_hostport(text[len(scheme):].rstrip("/"))
            return EtcdEndpoint(scheme[:-3], host, port)
    for scheme in ("unixs:", "unix:"):
        if text.startswith(scheme):
            path = "/" + text[len(scheme):].lstrip("/")
            folder, port = parse_hostport(path)
            return EtcdEndpoint(scheme[:-1], "unix:" + folder, port)
    if "://" in text:
        raise ValueError(f"'{text}': use https://, http://, unixs: or unix:")
    host, port = parse_hostport(text)
    return EtcdEndpoint("http", host, port)


def parse_endpoints(text: str) -> list[EtcdEndpoint]:
    """A comma-separated list of etcd client URLs (see EtcdEndpoint)."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("no endpoint given")
    return [parse_endpoint(t) for t in items]


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


def parse_replicas(text: str) -> list[str]:
    """A service's address, or its replicas' (comma-separated): all unix
    sockets or all host:port, each once."""
    addrs = parse_addresses(text)
    if len({a.startswith("unix:") for a in addrs}) > 1:
        raise ValueError("give unix sockets or host:port addresses, not both")
    twice = sorted({a for a in addrs if addrs.count(a) > 1})
    if twice:
        raise ValueError(f"{twice[0]} is given twice")
    return addrs


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


def parse_file(text: str) -> str:
    """A file that must exist ("" for none)."""
    text = text.strip()
    if text and not os.path.isfile(text):
        raise ValueError("no such file")
    return text


def parse_flag(text: str) -> bool:
    text = text.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("give 1 or 0")


ETCD_ENDPOINTS = Param(
    "etcd endpoints", "comma-separated etcd client URLs: https://host:port (TLS), "
    "http://host:port or host:port (plaintext)", "https://127.0.0.1:2379",
    ("ETCD_ENDPOINTS", "ETCD_AUTHORITY"), parse_endpoints)

PKI_DIR = Param(
    "certificate folder", "where `calicoctl certs` keeps the CA and certificates; a process "
    "given no TLS files uses the admin certificate found there", "/etc/calico-py/pki",
    ("CALICO_PKI_DIR",), parse_path)

ETCD_CA_CERT_FILE = Param(
    "etcd CA certificate", "the CA that signed etcd's certificate (for https:// endpoints); "
    "else CALICO_TLS_CA_FILE's", "", ("ETCD_CA_CERT_FILE",), parse_file)

ETCD_CERT_FILE = Param(
    "etcd client certificate", "the certificate this process presents to etcd, whose "
    "common name is its etcd user; else CALICO_TLS_CERT_FILE's", "", ("ETCD_CERT_FILE",),
    parse_file)

ETCD_KEY_FILE = Param(
    "etcd client key", "the key of ETCD_CERT_FILE; else CALICO_TLS_KEY_FILE's", "",
    ("ETCD_KEY_FILE",), parse_file)

TLS_CA_FILE = Param(
    "TLS CA certificate", "the CA every calico-py service and client trusts; else "
    "<certificate folder>/ca.pem", "", ("CALICO_TLS_CA_FILE",), parse_file)

TLS_CERT_FILE = Param(
    "TLS certificate", "this process's certificate: its identity (admin, node:<name>, "
    "scheduler:<name>, service:<name>); else <certificate folder>/admin.pem",
    "", ("CALICO_TLS_CERT_FILE",), parse_file)

TLS_KEY_FILE = Param(
    "TLS key", "the key of CALICO_TLS_CERT_FILE; else <certificate folder>/admin-key.pem",
    "", ("CALICO_TLS_KEY_FILE",), parse_file)

NODE_TLS_CERT_FILE = Param(
    "node certificate", "the certificate a node's processes present (identity node:<name>); "
    "calicoctl node gives it to them", "", ("CALICO_NODE_TLS_CERT_FILE",), parse_file)

NODE_TLS_KEY_FILE = Param(
    "node key", "the key of CALICO_NODE_TLS_CERT_FILE", "", ("CALICO_NODE_TLS_KEY_FILE",),
    parse_file)

INSECURE = Param(
    "plaintext TCP", "1: serve and call TCP ports without TLS, every caller acting as admin "
    "(throw-away labs only)", "0", ("CALICO_INSECURE",), parse_flag)

IPAM_ADDR = Param(
    "IPAM service address", "host:port or unix:<path> of the IPAM service; its "
    "replicas' addresses, comma-separated", "127.0.0.1:50051", ("CALICO_IPAM_ADDR",),
    parse_replicas)

IPAM_LISTEN = Param(
    "IPAM listen addresses", "comma-separated addresses the IPAM service serves on",
    "127.0.0.1:50051", ("CALICO_IPAM_LISTEN", "CALICO_IPAM_ADDR"), parse_addresses)

BGP_ADDR = Param(
    "BGP service address", "host:port or unix:<path> of the BGP service; its "
    "replicas' addresses, comma-separated", "127.0.0.1:50053", ("CALICO_BGP_ADDR",),
    parse_replicas)

BGP_LISTEN = Param(
    "BGP listen addresses", "comma-separated addresses the BGP service serves on",
    "127.0.0.1:50053", ("CALICO_BGP_LISTEN", "CALICO_BGP_ADDR"), parse_addresses)

POLICY_ADDR = Param(
    "policy service address", "host:port or unix:<path> of the policy service; its "
    "replicas' addresses, comma-separated", "127.0.0.1:50052", ("CALICO_POLICY_ADDR",),
    parse_replicas)

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

def parse_metrics_addr(text: str) -> str:
    """``host:port`` to serve Prometheus metrics on (port 0: any free one), or
    ``off`` for none (returned as "")."""
    text = text.strip()
    if text.lower() == "off":
        return ""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"'{text}' is not host:port (or off)")
    return text


METRICS_ADDR = Param(
    "metrics address", "host:port where this process (a node: all its processes) serves "
    "Prometheus metrics over HTTP; off: none. Each cluster service takes its own with "
    "--metrics", "127.0.0.1:9180 (a node), 9181 (IPAM), 9182 (policy), 9183 (BGP)",
    ("CALICO_METRICS_ADDR",), parse_metrics_addr)

def parse_log_format(text: str) -> str:
    text = text.strip().lower()
    if text not in ("kv", "json"):
        raise ValueError("use kv or json")
    return text


LOG_FORMAT = Param(
    "log format", "how every process writes its log lines: kv (key=value) or json (one "
    "object per line)", "kv", ("CALICO_LOG_FORMAT",), parse_log_format)

#: Each process's default metrics port (on loopback), when CALICO_METRICS_ADDR
#: and its flag are unset.
METRICS_PORTS = {"node": 9180, "ipam": 9181, "policy": 9182, "bgp": 9183}


def metrics_addr(process: str, explicit: str | None = None,
                 environ: Mapping[str, str] | None = None) -> str:
    """Where ``process`` serves its metrics ("" for nowhere): ``explicit``,
    else CALICO_METRICS_ADDR, else its own port on loopback."""
    environ = os.environ if environ is None else environ
    if explicit is None and not environ.get("CALICO_METRICS_ADDR"):
        return f"127.0.0.1:{METRICS_PORTS[process]}"
    return METRICS_ADDR.resolve(explicit, environ)


#: The Docker plugin's socket in DOCKER_PLUGIN_DIR (Docker finds plugins by file name).
DOCKER_PLUGIN_SOCKET = "calico.sock"

PARAMS = (ETCD_ENDPOINTS, ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE, IPAM_ADDR,
          POLICY_ADDR, BGP_ADDR, PKI_DIR, TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE, NODE_TLS_CERT_FILE,
          NODE_TLS_KEY_FILE, INSECURE, NODENAME,
          STATE_DIR, ENDPOINT_ADDR, RPC_TIMEOUT, DOCKER_HOST, DOCKER_PLUGIN_DIR, METRICS_ADDR,
          LOG_FORMAT)


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


def endpoint_cni_socket(addr: str) -> str | None:
    """The unix socket on which the endpoint service whose gRPC address is
    ``addr`` runs the CNI plugin's commands for its processes
    (services/endpoint/cni_server.py), next to the gRPC socket; None for a
    ``host:port`` address."""
    if not addr.strip().startswith("unix:"):
        return None
    return cni_socket(parse_unix_socket(addr))


def _files(params: tuple[Param, Param, Param], what: str, explicit=(None, None, None),
           environ: Mapping[str, str] | None = None):
    """The TLS files of three parameters (CA, certificate, key): all or none."""
    values = [p.resolve(e, environ) for p, e in zip(params, explicit)]
    if not any(values):
        return None
    if not all(values):
        missing = " and ".join(p.env[0] for p, v in zip(params, values) if not v)
        raise ConfigError(f"Incomplete {what} TLS configuration: {missing} not set (give the "
                          "CA, the certificate and the key).")
    from calicopy.tls import TlsFiles        # grpc only for processes that use TLS
    return TlsFiles.of(*values)


def tls_files(ca=None, cert=None, key=None, environ: Mapping[str, str] | None = None):
    """This process's gRPC TLS files (calicopy.tls.TlsFiles), or None: the
    CALICO_TLS_* files, else the admin certificate in the certificate folder
    when it has one (what `calicoctl certs` and `make up` write)."""
    found = _files((TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE), "gRPC", (ca, cert, key), environ)
    if found is not None:
        return found
    folder = PKI_DIR.resolve(environ=environ)
    paths = [os.path.join(folder, f) for f in ("ca.pem", "admin.pem", "admin-key.pem")]
    if all(os.path.isfile(p) for p in paths):
        from calicopy.tls import TlsFiles
        return TlsFiles.of(*paths)
    return None


def etcd_tls_files(environ: Mapping[str, str] | None = None):
    """The TLS files this process presents to etcd: ETCD_*_FILE, else its
    gRPC ones (an identity is the same in both), or None."""
    found = _files((ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE), "etcd", environ=environ)
    return found if found is not None else tls_files(environ=environ)


def describe() -> str:
    """A help paragraph listing every parameter and its environment variables."""
    lines = []
    for p in PARAMS:
        lines.append(f"  {' or '.join(p.env):<32} {p.meaning} (default {p.default})")
    return "\n".join(lines)
