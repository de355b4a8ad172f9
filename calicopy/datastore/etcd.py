"""The Store interface over a real etcd v3 cluster (through pyetcd)."""

from __future__ import annotations

import grpc
import pyetcd
from pyetcd import etcdrpc
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
        except grpc.RpcError as exc:   # from calls pyetcd does not wrap (streams)
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise DatastoreUnavailable(self.endpoints, exc.details() or "") from None
            raise

    def check(self) -> None:
        """Raise DatastoreUnavailable unless etcd answers."""
        self._call(self._client.status)

    def snapshot(self, prefix: str) -> tuple[int, list[KV]]:
        """Every key under ``prefix`` and the revision they are consistent at."""
        resp = self._call(self._client.get_prefix_response, prefix, sort_order="ascend",
                          sort_target="key")
        return resp.header.revision, [KV(kv.key.decode(), kv.value.decode(), kv.mod_revision)
                                      for kv in resp.kvs]

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

    def commit(self, txn: Txn) -> int:
        # Built by hand rather than through pyetcd's transaction(), which drops
        # the response header and with it the revision callers cache.
        compares = []
        for c in txn.compares:
            if c.mod_revision == 0:
                compares.append(etcdrpc.Compare(key=c.key.encode(), result=etcdrpc.Compare.EQUAL,
                                                target=etcdrpc.Compare.VERSION, version=0))
            else:
                compares.append(etcdrpc.Compare(key=c.key.encode(), result=etcdrpc.Compare.EQUAL,
                                                target=etcdrpc.Compare.MOD,
                                                mod_revision=c.mod_revision))
        ops = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
            key=k.encode(), value=v.encode(), lease=txn.leases.get(k, 0)))
            for k, v in txn.puts.items()]
        ops += [etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=k.encode()))
                for k in txn.deletes]
        request = etcdrpc.TxnRequest(compare=compares, success=ops, failure=[])
        response = self._call(self._txn, request)
        return response.header.revision if response.succeeded else 0

    def _txn(self, request):
        client = self._client
        try:
            return client.kvstub.Txn(request, client.timeout,
                                     credentials=client.call_credentials,
                                     metadata=client.metadata)
        except grpc.RpcError as exc:
            client._manage_grpc_errors(exc)  # pyetcd's failover and error mapping

    def grant_lease(self, ttl: int) -> int:
        return self._call(self._client.lease, ttl).id

    def refresh_lease(self, lease: int) -> bool:
        responses = self._call(lambda: list(self._client.refresh_lease(lease)))
        return all(r.TTL > 0 for r in responses)

    def watch(self, prefix: str, on_event):
        return self._call(self._client.add_watch_prefix_callback, prefix, on_event)

    def cancel_watch(self, handle) -> None:
        try:
            self._client.cancel_watch(handle)
        except Exception:   # the watch or the connection is gone already
            pass

    def delete_prefix(self, prefix: str) -> int:
        resp = self._call(self._client.delete_prefix, prefix)
        return resp.deleted
