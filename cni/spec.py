"""The CNI specification (1.1), as far as our plugins need it.

What a runtime hands a plugin (``CNI_*`` environment variables, the network
configuration on stdin), what a plugin answers (a result, or an error object,
on stdout), the versions we speak and how a result looks in each of them.
Pure: no I/O here, so every rule can be tested in memory.

Versions: we accept configurations of 0.3.0 to 1.1.0. A result is built in
the 1.x shape and converted for older versions (0.3.x/0.4.0 give each IP a
"version"). CHECK needs 0.4.0 or later, GC and STATUS 1.1.0, as in the
reference plugins' skeleton. A configuration without ``cniVersion`` means
0.1.0, which we do not speak.
"""

from __future__ import annotations

import json
import re

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
#: The first version that has each command (others have all of these).
SINCE = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# Error codes of the specification...
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51
# ... and ours (100 and up are the plugin's own).
INTERNAL = 100          # an unexpected failure in a service or in the plugin
REJECTED = 101          # calico-py refused: state conflicts (address outside pools, no IPv6...)
POOL_EXHAUSTED = 102    # no free address in the pools asked for
IN_USE = 103            # the address, or the interface in the namespace, is taken
CHECK_FAILED = 104      # CHECK found the container differs from its result

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)\Z")


class CniError(Exception):
    """An error as the specification shapes it: a code, a message for the
    person, and details (what exactly, from whom)."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, version: str) -> dict:
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(text: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(text or "")
    if not match:
        raise CniError(INCOMPATIBLE_VERSION, f"Invalid cniVersion '{text}': expected x.y.z.")
    return tuple(int(g) for g in match.groups())


def at_least(version: str, other: str) -> bool:
    return version_tuple(version) >= version_tuple(other)


# Environment ------------------------------------------------------------------------------

class Env:
    """The ``CNI_*`` variables of one invocation, validated for its command.

    ``environ`` is the whole environment the runtime gave the plugin, and
    ``hostname`` the host name the plugin's process sees, where the plugin's
    defaults come from (``cni.config``); None: this process's own (they
    differ when the node runs the command for the plugin's process:
    services/endpoint/cni_server.py)."""

    def __init__(self, command: str, container_id: str = "", netns: str = "",
                 ifname: str = "", args: dict | None = None, path: list | None = None,
                 environ=None, hostname: str | None = None):
        self.command, self.container_id, self.netns = command, container_id, netns
        self.ifname, self.args, self.path = ifname, args or {}, path or []
        self.environ, self.hostname = environ, hostname


def command_of(environ) -> str:
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        what = f"'{command}'" if command else "missing"
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND is {what}: expected one of "
                       f"{', '.join(COMMANDS)}.")
    return command


def _required(environ, name: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise CniError(INVALID_ENVIRONMENT, f"{name} is not set; the runtime must set it for "
                       f"{environ.get('CNI_COMMAND')}.")
    return value


def validate_ifname(name: str) -> str:
    if not name or len(name) > 15 or name in (".", "..") or \
            any(c in "/:" or c.isspace() for c in name):
        raise CniError(INVALID_ENVIRONMENT, f"Invalid CNI_IFNAME '{name}': use 1-15 characters, "
                       "no '/', ':' or spaces, not '.' or '..'.")
    return name


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K2=V2``."""
    out = {}
    for item in filter(None, (text or "").split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"Invalid CNI_ARGS '{text}': expected "
                           "KEY=VALUE pairs separated by ';'.")
        out[key] = value
    return out


def read_env(environ, hostname: str | None = None) -> Env:
    """The invocation's variables; which are required depends on the command
    (``CNI_NETNS`` is optional for DEL: the namespace may be gone)."""
    command = command_of(environ)
    env = Env(command, environ=environ, hostname=hostname)
    if command in ("ADD", "DEL", "CHECK"):
        env.container_id = _required(environ, "CNI_CONTAINERID")
        if not _ID_RE.match(env.container_id):
            raise CniError(INVALID_ENVIRONMENT, f"Invalid CNI_CONTAINERID '{env.container_id}': "
                           "use letters, digits, '_', '.' or '-', starting with a letter or "
                           "digit.")
        env.ifname = validate_ifname(_required(environ, "CNI_IFNAME"))
        env.netns = environ.get("CNI_NETNS", "") if command == "DEL" else \
            _required(environ, "CNI_NETNS")
        if env.netns and not env.netns.startswith("/"):
            raise CniError(INVALID_ENVIRONMENT, f"Invalid CNI_NETNS '{env.netns}': give the "
                           "absolute path of a network namespace.")
        env.path = [p for p in _required(environ, "CNI_PATH").split(":") if p]
        env.args = parse_args(environ.get("CNI_ARGS", ""))
    return env


# Configuration ----------------------------------------------------------------------------

def decode_config(data: bytes | str) -> dict:
    """The network configuration on stdin: a JSON object."""
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODING_FAILURE, "The network configuration on stdin is not valid "
                       "JSON.", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "The network configuration on stdin must be a JSON "
                       f"object, not {type(conf).__name__}.")
    return conf


def negotiate(conf: dict, command: str) -> str:
    """The configuration's cniVersion, if we speak it and it has ``command``."""
    version = conf.get("cniVersion", "0.1.0")
    if not isinstance(version, str):
        raise CniError(INCOMPATIBLE_VERSION, f"Invalid cniVersion {json.dumps(version)}.")
    version_tuple(version)
    if version not in SUPPORTED_VERSIONS:
        said = "has no cniVersion (meaning 0.1.0)" if "cniVersion" not in conf \
            else f"is version {version}"
        raise CniError(INCOMPATIBLE_VERSION, f"The network configuration {said}; this plugin "
                       f"supports {', '.join(SUPPORTED_VERSIONS)}.")
    since = SINCE.get(command)
    if since and not at_least(version, since):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {since} or later; "
                       f"the configuration is version {version}.")
    return version


def validate_common(conf: dict) -> None:
    """Fields every network configuration has."""
    name = conf.get("name")
    if not isinstance(name, str) or not _ID_RE.match(name):
        raise CniError(INVALID_CONFIG, f"Invalid network name {json.dumps(name)}: use letters, "
                       "digits, '_', '.' or '-', starting with a letter or digit.")
    if not isinstance(conf.get("type"), str) or not conf["type"]:
        raise CniError(INVALID_CONFIG, "The network configuration has no plugin 'type'.")
    for key in ("runtimeConfig", "args", "prevResult", "ipam", "dns"):
        if key in conf and not isinstance(conf[key], dict):
            raise CniError(INVALID_CONFIG, f"'{key}' must be a JSON object.")


def valid_attachments(conf: dict) -> set[tuple[str, str]]:
    """GC: the (container id, interface) pairs the runtime still uses."""
    items = conf.get("cni.dev/valid-attachments")
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, "GC needs 'cni.dev/valid-attachments' (a list, possibly "
                       "empty) in the configuration.")
    out = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise CniError(INVALID_CONFIG, "Each of 'cni.dev/valid-attachments' must be "
                           f"{{\"containerID\": ..., \"ifname\": ...}}, not {json.dumps(item)}.")
        out.add((item["containerID"], item["ifname"]))
    return out


# Results ----------------------------------------------------------------------------------

def canonical(result: dict) -> dict:
    """A result of any supported version in the 1.x shape (prevResult)."""
    if not isinstance(result, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be a JSON object.")
    out = {"interfaces": [dict(i) for i in result.get("interfaces") or []],
           "ips": [{k: v for k, v in ip.items() if k != "version"}
                   for ip in result.get("ips") or []],
           "routes": [dict(r) for r in result.get("routes") or []]}
    if result.get("dns"):
        out["dns"] = dict(result["dns"])
    return out


def merge(prev: dict | None, ours: dict) -> dict:
    """Our result appended to the previous plugins' (an interface-creating
    plugin that is not first in a chain passes theirs on)."""
    if not prev:
        return ours
    prev = canonical(prev)
    base = len(prev["interfaces"])
    ips = [dict(ip, interface=ip["interface"] + base) if "interface" in ip else ip
           for ip in ours.get("ips", [])]
    merged = {"interfaces": prev["interfaces"] + ours.get("interfaces", []),
              "ips": prev["ips"] + ips, "routes": prev["routes"] + ours.get("routes", [])}
    dns = ours.get("dns") or prev.get("dns")
    if dns:
        merged["dns"] = dns
    return merged


def format_result(result: dict, version: str) -> dict:
    """``result`` (1.x shape) as ``version`` writes it."""
    ips = result.get("ips", [])
    if not at_least(version, "1.0.0"):
        ips = [dict(ip, version="6" if ":" in ip["address"] else "4") for ip in ips]
    out = {"cniVersion": version}
    if "interfaces" in result:
        out["interfaces"] = result["interfaces"]
    out["ips"] = ips
    if result.get("routes"):
        out["routes"] = result["routes"]
    out["dns"] = result.get("dns") or {}
    return out


def version_info(requested: str = "") -> dict:
    """The answer to VERSION."""
    return {"cniVersion": requested if requested in SUPPORTED_VERSIONS else LATEST,
            "supportedVersions": list(SUPPORTED_VERSIONS)}
