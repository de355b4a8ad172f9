"""One plugin invocation: read the environment and stdin, run the command, answer.

A plugin is an object with ``add``, ``delete``, ``check``, ``gc`` and
``status`` methods taking (env, conf, version); ``add`` returns a result in
the 1.x shape, the others return nothing. Whatever goes wrong becomes the
specification's error object on stdout and exit code 1; an exception we did
not expect becomes error 100 with its type and message, never a traceback on
stdout (which the runtime parses).

The same ``run`` serves a command the plugin's process forwarded to the node
(services/endpoint/cni_server.py, with that process's environment and host
name); a plugin run there raises ``HandBack`` for what only the plugin's own
process can do, and ``run`` lets it through.
"""

from __future__ import annotations

import json
import os
import sys

from calicopy import request_id
from cni import spec
from cni.spec import CniError


class HandBack(Exception):
    """The command cannot run here: the plugin's own process must run it
    (raised only by a plugin run inside the node, before it changed anything)."""


def _answer(out, obj: dict) -> None:
    out.write(json.dumps(obj))
    out.write("\n")
    out.flush()


def run(plugin, environ=None, stdin=None, stdout=None, hostname: str | None = None) -> int:
    """Run one command of ``plugin``; returns the process's exit code.
    ``environ`` and ``hostname``: the plugin process's (default: this one's)."""
    environ = os.environ if environ is None else environ
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    version = spec.LATEST
    try:
        command = spec.command_of(environ)
        data = stdin.read()
        if command == "VERSION":
            requested = spec.decode_config(data).get("cniVersion", "") if data.strip() else ""
            _answer(stdout, spec.version_info(requested))
            return 0
        conf = spec.decode_config(data)
        if conf.get("cniVersion") in spec.SUPPORTED_VERSIONS:
            version = conf["cniVersion"]       # errors from here on speak its version
        version = spec.negotiate(conf, command)
        env = spec.read_env(environ, hostname)
        spec.validate_common(conf)
        method = {"ADD": plugin.add, "DEL": plugin.delete, "CHECK": plugin.check,
                  "GC": plugin.gc, "STATUS": plugin.status}[command]
        # The request id every service logs this command under (calicopy.logs):
        # the command and the container, which the runtime's own logs name.
        rid = f"cni-{command.lower()}-{environ.get('CNI_CONTAINERID', '')[:12]}"
        with request_id.request(rid):
            result = method(env, conf, version)
        if result is not None:
            _answer(stdout, spec.format_result(result, version))
        return 0
    except CniError as exc:
        _answer(stdout, exc.to_json(version))
        return 1
    except HandBack:
        raise
    except Exception as exc:   # reported as the spec wants, not as a traceback
        _answer(stdout, CniError(spec.INTERNAL, f"Unexpected error in the plugin: {exc}",
                                 type(exc).__name__).to_json(version))
        return 1


def main(plugin) -> None:
    """Entry point of a plugin executable. Exits without tearing the
    interpreter down (grpc's shutdown hooks cost milliseconds a runtime would
    wait for); everything was flushed by then."""
    code = run(plugin)
    sys.stderr.flush()
    os._exit(code)
