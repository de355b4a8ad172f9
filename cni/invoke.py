"""Running CNI plugins the way a runtime does (Debian ships no ``cnitool``).

``invoke`` executes one plugin with the ``CNI_*`` variables and a
configuration on stdin and parses what it prints. ``Chain`` runs a
configuration list: ADD through the plugins in order, each given the
previous one's result as ``prevResult``; DEL in reverse order with the
cached ADD result; CHECK in order with it; GC and STATUS for each plugin.
Capabilities are honoured: a plugin that declares one gets the matching
``runtimeConfig`` key. Used by the tests and the benchmark; plugins run in
whatever namespace ``runner`` (an argv prefix such as ``nsenter --net=...``)
puts them in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path


@dataclasses.dataclass
class Outcome:
    argv: list[str]
    returncode: int
    output: dict | None         # stdout parsed, None if empty
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def __str__(self) -> str:
        return (f"{' '.join(self.argv)} exited {self.returncode} in {self.seconds:.3f}s: "
                f"{self.stdout.strip()} {self.stderr.strip()}")


def find_plugin(kind: str, cni_path: list[str]) -> str:
    for folder in cni_path:
        candidate = Path(folder) / kind
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(f"no CNI plugin '{kind}' in {':'.join(cni_path)}")


def invoke(plugin: str, command: str, config: dict | str | bytes | None, *,
           container_id: str = "", netns: str = "", ifname: str = "eth0",
           cni_path: list[str] = (), args: str = "", runner: list[str] = (),
           env: dict | None = None, timeout: float = 60) -> Outcome:
    """Run ``plugin`` once. ``config`` is sent as JSON (a str or bytes as it
    is). Variables given as None in ``env`` are left out."""
    variables = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                 "CNI_IFNAME": ifname, "CNI_PATH": ":".join(cni_path), "CNI_ARGS": args}
    full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    full.update({k: v for k, v in variables.items() if v})
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    if isinstance(config, (dict, list)):
        data = json.dumps(config).encode()
    elif isinstance(config, str):
        data = config.encode()
    else:
        data = config or b""
    argv = [*runner, plugin]
    start = time.perf_counter()
    proc = subprocess.run(argv, input=data, capture_output=True, env=full, timeout=timeout)
    seconds = time.perf_counter() - start
    stdout = proc.stdout.decode(errors="replace")
    try:
        output = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        output = None
    return Outcome(argv, proc.returncode, output, stdout, proc.stderr.decode(errors="replace"),
                   seconds)


class ChainError(RuntimeError):
    def __init__(self, outcome: Outcome, plugin: str):
        super().__init__(f"{plugin}: {outcome}")
        self.outcome, self.plugin = outcome, plugin


class Chain:
    """A network configuration list, run as a runtime would."""

    def __init__(self, conflist: dict, cni_path: list[str], runner: list[str] = ()):
        self.conflist, self.cni_path, self.runner = conflist, list(cni_path), list(runner)

    def _config(self, plugin: dict, prev: dict | None, runtime: dict,
                extra: dict | None = None) -> dict:
        conf = dict(plugin, cniVersion=self.conflist["cniVersion"], name=self.conflist["name"])
        wanted = {k: v for k, v in runtime.items()
                  if (plugin.get("capabilities") or {}).get(k)}
        if wanted:
            conf["runtimeConfig"] = wanted
        if prev is not None:
            conf["prevResult"] = prev
        conf.update(extra or {})
        return conf

    def _run(self, plugin: dict, command: str, conf: dict, **kw) -> Outcome:
        return invoke(find_plugin(plugin["type"], self.cni_path), command, conf,
                      cni_path=self.cni_path, runner=self.runner, **kw)

    def add(self, container_id: str, netns: str, ifname: str = "eth0",
            runtime: dict | None = None) -> dict:
        prev = None
        for plugin in self.conflist["plugins"]:
            out = self._run(plugin, "ADD", self._config(plugin, prev, runtime or {}),
                            container_id=container_id, netns=netns, ifname=ifname)
            if not out.ok:
                raise ChainError(out, plugin["type"])
            prev = out.output
        return prev

    def _each(self, command: str, plugins, container_id="", netns="", ifname="eth0",
              prev=None, runtime=None, extra=None) -> list[Outcome]:
        failed = []
        for plugin in plugins:
            out = self._run(plugin, command, self._config(plugin, prev, runtime or {}, extra),
                            container_id=container_id, netns=netns, ifname=ifname)
            if not out.ok:
                failed.append(out)
        return failed

    def delete(self, container_id: str, netns: str, ifname: str = "eth0",
               prev: dict | None = None, runtime: dict | None = None) -> list[Outcome]:
        """Every plugin, last first, even after one fails; returns the failures."""
        return self._each("DEL", reversed(self.conflist["plugins"]), container_id, netns,
                          ifname, prev, runtime)

    def check(self, container_id: str, netns: str, prev: dict, ifname: str = "eth0",
              runtime: dict | None = None) -> list[Outcome]:
        return self._each("CHECK", self.conflist["plugins"], container_id, netns, ifname, prev,
                          runtime)

    def gc(self, valid: list[tuple[str, str]]) -> list[Outcome]:
        attachments = [{"containerID": c, "ifname": i} for c, i in valid]
        return self._each("GC", self.conflist["plugins"],
                          extra={"cni.dev/valid-attachments": attachments})

    def status(self) -> list[Outcome]:
        return self._each("STATUS", self.conflist["plugins"])
