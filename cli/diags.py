"""Collect this host's diagnostics into one archive (nothing is uploaded).

Usage:
  calicoctl diags [--name=<NAME>] [--output=<DIR>]

Options:
  --name=<NAME>    The node (default: CALICO_NODENAME, else the hostname).
  --output=<DIR>   Where to write the archive [default: /tmp].

The archive holds the node's logs, BIRD configuration and state, routes,
addresses, iptables and ipset listings, and a dump of calico-py's etcd data.
It reads etcd directly (ETCD_ENDPOINTS), so it works when the services do not.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from calicopy import config
from calicopy.datastore import keys
from calicopy.errors import Unavailable

COMMANDS = {
    "ip-addr.txt": ["ip", "addr"],
    "ip-route.txt": ["ip", "-4", "route", "show", "table", "all"],
    "ip6-route.txt": ["ip", "-6", "route", "show", "table", "all"],
    "ip-neigh.txt": ["ip", "neigh"],
    "iptables-save.txt": ["iptables-save"],
    "ip6tables-save.txt": ["ip6tables-save"],
    "ipset-list.txt": ["ipset", "list"],
}


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _run(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return f"{argv[0]} is not installed\n"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def run(args: dict) -> None:
    name = config.NODENAME.resolve(args["--name"])
    paths = config.node_paths(name)
    folder = paths.dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args["--output"] or "/tmp") / f"calico-diags-{name}-{stamp}.tar.gz"
    base = f"calico-diags-{name}-{stamp}"
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(folder.glob("*")) if folder.exists() else []:
            if file.suffix in (".log", ".conf", ".json"):
                tar.add(file, f"{base}/node/{file.name}")
        for filename, argv in COMMANDS.items():
            _add(tar, f"{base}/{filename}", _run(argv))
        ctl = paths.bird_ctl
        if ctl.exists():
            for what in ("protocols all", "route all"):
                _add(tar, f"{base}/birdc-show-{what.split()[0]}.txt",
                     _run(["birdc", "-s", str(ctl), "show", *what.split()]))
        _add(tar, f"{base}/etcd-dump.json", _etcd_dump())
    print(f"Diags saved to {path}")


def _etcd_dump() -> str:
    from calicopy.datastore.etcd import EtcdStore
    try:
        store = EtcdStore.from_env(timeout=5)
        try:
            return json.dumps({kv.key: kv.value for kv in store.list(keys.ROOT)}, indent=1)
        finally:
            store.close()
    except (Unavailable, config.ConfigError) as exc:
        return json.dumps({"error": str(exc)})
