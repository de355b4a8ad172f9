"""What ``cni/bin/calico`` runs: a client that hands the invocation to the node.

A runtime starts a plugin process per command and waits for it, so the
process's start-up is on every pod's path. This module runs under
``python -S -I`` (no site packages) and imports only modules built into the
interpreter or loaded from one small shared object each (``sys``, ``posix``,
``_socket``, ``_json``): no ``os``, ``socket`` or ``json``, whose import
chains alone cost milliseconds. It does no CNI logic. For ADD, DEL, CHECK and
GC it finds the node's CNI socket (``endpoint.cni.sock``, next to the
endpoint service's gRPC socket), sends the invocation (its environment, host
name and stdin) and writes what the node answers: the plugin's stdout and
exit code. The node's endpoint service runs the ``calico`` plugin's own code
on it (services/endpoint/cni_server.py), so errors, results, chaining and
versions are the plugin's. VERSION is answered here (``spec.version_info``,
the same bytes).

Whenever it cannot do that, the whole plugin runs in this process instead
(``exec`` of the virtualenv's interpreter with ``cni.calico``, the same
stdin), which gives the answer the plugin always gave:

- STATUS (it asks the IPAM and policy services over gRPC);
- stdin that is not a JSON object, or keys that say where the node is that
  are not plain strings, or an endpoint address that is not a unix socket
  (the plugin names what is wrong);
- the socket cannot be reached (no node, an older node without it): the
  plugin says which service cannot be reached, with the CNI error for it;
- the node hands the command back: a profile to create over gRPC (once per
  network and node every few minutes: cni/profiles.py), or the configuration
  names another node's endpoint service than the one that answered;
- no complete answer (the node stopped mid-command, or took longer than the
  plugin's own deadlines allow): every command forwarded is idempotent, so
  running it again here is safe.

Wire format (both ways: netstrings, ``<length>:<bytes>,``): the request is
``calico-cni/1``, the host name, the environment (``KEY=VALUE`` entries
joined by NUL) and stdin; the answer is the exit code in decimal, or
``hand-back``, and the plugin's stdout.

Where the socket is: the ``calico`` plugin's keys and variables, resolved as
``cni.config`` does (``endpoint_addr``, else ``state_dir`` and ``nodename``,
else ``CALICO_ENDPOINT_ADDR``, else ``CALICO_STATE_DIR``, ``CALICO_NODENAME``,
``NODENAME``, the host name, with calicopy.config's defaults). The node
resolves them again with the plugin's code and hands the command back if it
is not the endpoint service they name.
"""

import _json
import _socket
import posix
import sys

PROTOCOL = b"calico-cni/1"
HAND_BACK = b"hand-back"
FORWARDED = ("ADD", "DEL", "CHECK", "GC")
# What calicopy.config and calicopy.node_paths say (tests/unit/test_cni_thin.py checks it).
STATE_DIR = "/var/run/calico-py"
ENDPOINT_SOCKET = "endpoint.sock"
CNI_SUFFIX = ".cni.sock"
DEFAULT_TIMEOUT = 10.0
# The node may make up to four calls to its endpoint service for one
# command, each within the plugin's timeout; past that the answer is late.
CALLS = 4
SLACK = 5.0
# What cni.spec says (checked by the same test).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# What cni/bin/calico ran before; ``main`` of cni.calico runs the whole plugin here.
LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); from cni.calico import main; main()"


class RunHere(Exception):
    """The plugin must run in this process (see the module docstring)."""


# JSON, with the standard library's C scanner (json.loads without the json package).

class _Scanning:
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__


_scan = _json.make_scanner(_Scanning())
_SPACE = " \t\n\r"


def decode(data: bytes):
    """A JSON document, as json.loads reads UTF-8; RunHere if it is not one."""
    try:
        text = data.decode()
        start = len(text) - len(text.lstrip(_SPACE))
        value, end = _scan(text, start)
    except Exception:   # noqa: BLE001 (whatever it is, the plugin says it better)
        raise RunHere() from None
    if text[end:].strip(_SPACE):
        raise RunHere()
    return value


def version_answer(data: bytes) -> bytes:
    """VERSION's answer, as ``json.dumps(spec.version_info(requested))``."""
    conf = decode(data) if data.strip() else {}
    if not isinstance(conf, dict):
        raise RunHere()
    requested = conf.get("cniVersion", "")
    if not (isinstance(requested, str) and requested in SUPPORTED_VERSIONS):
        requested = SUPPORTED_VERSIONS[-1]
    versions = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": "{requested}", "supportedVersions": [{versions}]}}\n'.encode()


# Where the node is.

def _text(conf: dict, key: str):
    value = conf.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RunHere()
    return value.strip()


def _env(environ: dict, *names: str):
    for name in names:
        value = environ.get(name.encode())
        if value:
            return value.decode("utf-8", "surrogateescape")
    return None


def _unix_path(addr: str) -> str:
    """calicopy.config.parse_address of a unix address; RunHere for host:port."""
    addr = addr.strip()
    if not addr.startswith("unix:") or not addr[5:].lstrip("/"):
        raise RunHere()
    return "/" + addr[5:].lstrip("/")


def socket_path(conf: dict, environ: dict, hostname: str) -> str:
    """The node's CNI socket, for the ``calico`` plugin's configuration
    ``conf`` and the variables ``environ`` (bytes to bytes, as posix.environ)."""
    endpoint = _text(conf, "endpoint_addr")
    if endpoint is not None:
        grpc_socket = _unix_path(endpoint)
    else:
        node = _text(conf, "nodename") or _env(environ, "CALICO_NODENAME", "NODENAME") or \
            hostname
        state_dir = _text(conf, "state_dir")
        from_env = _env(environ, "CALICO_ENDPOINT_ADDR") if state_dir is None else None
        if from_env is not None:
            grpc_socket = _unix_path(from_env)
        else:
            folder = state_dir or _env(environ, "CALICO_STATE_DIR") or STATE_DIR
            if not folder.startswith("/"):
                raise RunHere()
            grpc_socket = f"{folder.rstrip('/')}/{node.strip()}/{ENDPOINT_SOCKET}"
    return grpc_socket.removesuffix(".sock") + CNI_SUFFIX


def patience(conf: dict, environ: dict) -> float:
    """Seconds to wait for the node's answer: what the plugin's own calls
    could take (its ``timeout`` key, else CALICO_RPC_TIMEOUT, else 10)."""
    timeout = conf.get("timeout")
    if timeout is None:
        text = _env(environ, "CALICO_RPC_TIMEOUT")
        try:
            timeout = float(text) if text else DEFAULT_TIMEOUT
        except ValueError:
            raise RunHere() from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
            not 0 < timeout < 1e6:
        raise RunHere()
    return CALLS * timeout + SLACK


# The exchange.

def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def request(environ: dict, hostname: str, stdin: bytes) -> bytes:
    block = b"\0".join(k + b"=" + v for k, v in environ.items())
    return b"".join(netstring(f) for f in (PROTOCOL, hostname.encode(), block, stdin))


def netstrings(data: bytes, count: int) -> list[bytes]:
    """The first ``count`` netstrings of ``data``; ValueError if incomplete."""
    out, pos = [], 0
    for _ in range(count):
        colon = data.index(b":", pos, pos + 21)
        digits = data[pos:colon]
        if not digits.isdigit():
            raise ValueError("bad netstring length")
        end = colon + 1 + int(digits)
        if data[end:end + 1] != b",":
            raise ValueError("incomplete netstring")
        out.append(data[colon + 1:end])
        pos = end + 1
    return out


def exchange(path: str, message: bytes, timeout: float) -> tuple[int, bytes]:
    """Send ``message`` to the node; (exit code, stdout). RunHere when there
    is no complete answer or the node hands the command back."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(message)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        status, stdout = netstrings(b"".join(chunks), 2)
    except (OSError, ValueError):
        raise RunHere() from None
    finally:
        sock.close()
    if status == HAND_BACK or not status.isdigit():
        raise RunHere()
    return int(status), stdout


# This process.

def _read_stdin() -> bytes:
    chunks = []
    while True:
        chunk = posix.read(0, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_stdout(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(1, view):]


def run_here(repo: str, stdin: bytes) -> None:
    """Replace this process with the whole plugin, ``stdin`` as its stdin."""
    fd = posix.memfd_create("calico-cni-stdin")
    view = memoryview(stdin)
    while view:
        view = view[posix.write(fd, view):]
    posix.lseek(fd, 0, 0)
    posix.dup2(fd, 0)
    posix.close(fd)
    python = sys.executable
    posix.execv(python, [python, "-I", "-c", LAUNCH, repo])


def answer(environ: dict, hostname: str, stdin: bytes) -> tuple[int, bytes]:
    """(exit code, stdout) of the invocation; RunHere if it must run here."""
    command = _env(environ, "CNI_COMMAND")
    if command == "VERSION":
        return 0, version_answer(stdin)
    if command not in FORWARDED:
        raise RunHere()
    conf = decode(stdin)
    if not isinstance(conf, dict):
        raise RunHere()
    return exchange(socket_path(conf, environ, hostname), request(environ, hostname, stdin),
                    patience(conf, environ))


def main() -> None:
    """``cni/bin/calico``: the repository is the first argument."""
    repo = sys.argv[1]
    stdin = _read_stdin()
    try:
        code, stdout = answer(posix.environ, posix.uname().nodename, stdin)
    except RunHere:
        run_here(repo, stdin)
    _write_stdout(stdout)
    posix._exit(code)
