"""The Store interface over a real etcd v3 cluster (through pyetcd)."""

from __future__ import annotations

import pyetcd
from pyetcd import exceptions as etcd_exc

from calicopy.datastore.store import KV, DatastoreUnavailable, Txn

# Seconds a failed endpoint is skipped before it is tried again; pyetcd's own
# default (300 s) would make a service blind for minutes after etcd restarts.
_ENDPOINT_RETRY = 1.0


def _prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


class EtcdStore:
    """A Store backed by etcd. Safe to share between threads."""

    def __init__(self, endpoints: list[tuple[str, int]], timeout: float = 5.0):
        self.endpoints = ",".join(f"{h}:{p}" for h, p in endpoints)
        self._client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[pyetcd.Endpoint(h, p, secure=False, time_retry=_ENDPOINT_RETRY)
                       for h, p in endpoints],
            timeout=timeout, failover=True)
        self._tx = self._client.transactions

    def close(self) -> None:
        self._client.close()

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                etcd_exc.NoServerAvailableError) as exc:
            raise DatastoreUnavailable(self.endpoints, str(exc)) from None

    def check(self) -> None:
        """Raise DatastoreUnavailable unless etcd answers."""
        self._call(self._client.status)

    def get(self, key: str) -> KV | None:
        value, meta = self._call(self._client.get, key)
        if meta is None:
            return None
        return KV(key, value.decode(), meta.mod_revision)

    def list(self, prefix: str) -> list[KV]:
        got = self._call(self._client.get_prefix, prefix, sort_order="ascend",
                         sort_target="key")
        return [KV(meta.key.decode(), value.decode(), meta.mod_revision)
                for value, meta in got]

    def commit(self, txn: Txn) -> bool:
        compares = []
        for c in txn.compares:
            if c.mod_revision == 0:
                compares.append(self._tx.version(c.key) == 0)
            else:
                compares.append(self._tx.mod(c.key) == c.mod_revision)
        ops = [self._tx.put(k, v) for k, v in txn.puts.items()]
        ops += [self._tx.delete(k) for k in txn.deletes]
        succeeded, _ = self._call(self._client.transaction, compare=compares,
                                  success=ops, failure=[])
        return succeeded

    def delete_prefix(self, prefix: str) -> int:
        resp = self._call(self._client.delete_prefix, prefix)
        return resp.deleted
