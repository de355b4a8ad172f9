"""Find the malformed records in etcd.

Usage:
  calicoctl check

Reads every calico-py record from etcd (ETCD_ENDPOINTS, as the operator) and
lists each one its readers cannot read, with its key and what is wrong.
Every reader treats such a record as absent (a workload whose endpoint record
is malformed gets no policy and no route) and reports it in its log and, on a
node, in `calicoctl status`. Fix the record, or delete it and let its owner
write it again (e.g. `calicoctl container remove`, then add the workload
again). Exits 1 when it found any. It talks to etcd directly, so it works
when the services do not.
"""

from __future__ import annotations

from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from calicopy.model import families
from cli.errors import CliError


def run(args: dict) -> None:
    store = EtcdStore.from_env()
    try:
        _, kvs = store.snapshot(keys.ROOT)
    finally:
        store.close()
    found = families.check(kvs)
    summary = f"Checked {len(kvs)} record(s) in etcd at {store.endpoints}"
    if not found:
        print(f"{summary}: no malformed records.")
        return
    print(f"{summary}: {len(found)} malformed record(s), each treated as absent:")
    for key, why in found:
        print(f"  {key}: {why}")
    raise CliError("Fix or delete the malformed records above.")
