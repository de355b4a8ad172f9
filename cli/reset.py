"""Remove all of calico-py's data from etcd.

Usage:
  calicoctl reset [--yes]

Options:
  --yes   Do not ask for confirmation.

Every pool, allocation, node, endpoint, profile and BGP setting goes. Nodes
and workloads keep running with what the kernel has, but nothing describes
them any more: stop the nodes first. This talks to etcd directly
(ETCD_ENDPOINTS), so it works when the services do not.
"""

from __future__ import annotations

import sys

from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from cli.errors import CliError


def run(args: dict) -> None:
    store = EtcdStore.from_env()
    where = store.endpoints
    if not args["--yes"]:
        if not sys.stdin.isatty():
            store.close()
            raise CliError("Refusing to reset without confirmation; add --yes.")
        answer = input(f"Remove ALL calico-py data from etcd at {where}? Type 'yes': ")
        if answer.strip() != "yes":
            store.close()
            raise CliError("Reset cancelled; nothing was removed.")
    try:
        removed = store.delete_prefix(keys.ROOT)
    finally:
        store.close()
    print(f"Removed {removed} key(s): all calico-py data is gone from etcd at {where}.")
