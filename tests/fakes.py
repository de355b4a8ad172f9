"""In-memory stand-ins that hold state, for unit tests."""

from __future__ import annotations

import threading

from calicopy.datastore.store import KV, Txn


class MemoryStore:
    """A dict-backed Store with etcd's revision semantics."""

    endpoints = "memory"

    def __init__(self):
        self.data: dict[str, KV] = {}
        self.revision = 0
        self.commits = 0
        self.lock = threading.Lock()

    def get(self, key):
        return self.data.get(key)

    def list(self, prefix):
        return [kv for k, kv in sorted(self.data.items()) if k.startswith(prefix)]

    def commit(self, txn: Txn) -> int:
        with self.lock:
            for c in txn.compares:
                kv = self.data.get(c.key)
                if (kv.mod_revision if kv else 0) != c.mod_revision:
                    return 0
            self.revision += 1
            self.commits += 1
            for key, value in txn.puts.items():
                self.data[key] = KV(key, value, self.revision)
            for key in txn.deletes:
                self.data.pop(key, None)
            return self.revision

    def delete_prefix(self, prefix):
        with self.lock:
            gone = [k for k in self.data if k.startswith(prefix)]
            for k in gone:
                del self.data[k]
            return len(gone)

    def json(self, key):
        kv = self.data.get(key)
        return kv.json() if kv else None
