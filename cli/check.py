"""Find the malformed records in etcd.

Usage:
  calicoctl check [-o <FORMAT>]

Options:
  -o <FORMAT>   Output format: table (the default) or json (its shape is in
                docs/cli-json.md; it exits 1 on malformed records either way).

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
from cli import output
from cli.errors import CliError


def run(args: dict) -> None:
    store = EtcdStore.from_env()
    try:
        _, kvs = store.snapshot(keys.ROOT)
    finally:
        store.close()
    found = families.check(kvs)
    doc = {"etcd_endpoints": store.endpoints.split(","), "records_checked": len(kvs),
           "malformed": [{"key": key, "problem": why} for key, why in found]}

    def render(doc):
        summary = (f"Checked {doc['records_checked']} record(s) in etcd at "
                   f"{','.join(doc['etcd_endpoints'])}")
        if not doc["malformed"]:
            return f"{summary}: no malformed records."
        return "\n".join([f"{summary}: {len(doc['malformed'])} malformed record(s), each "
                          "treated as absent:"] +
                         [f"  {m['key']}: {m['problem']}" for m in doc["malformed"]])
    output.emit(args, "RecordCheck", doc, render)
    if found:
        raise CliError("Fix or delete the malformed records above.")
