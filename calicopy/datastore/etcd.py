"""The Store interface over a real etcd v3 cluster (through pyetcd), plaintext or TLS."""

from __future__ import annotations

import threading
import time

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc

from calicopy import config
from calicopy.config import ConfigError, EtcdEndpoint
from calicopy.datastore.etcd_watch import PrefixWatch, WatchFailed
from calicopy.datastore.store import KV, DatastoreUnavailable, Txn
from calicopy.errors import PermissionDenied

# Seconds a failed endpoint is skipped before it is tried again; pyetcd's own
# default (300 s) would make a service blind for minutes after etcd restarts.
_ENDPOINT_RETRY = 1.0


def _prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


# A connection whose packets are being dropped (a partition) must be given up
# within seconds, not after TCP's retransmissions give up (minutes), and
# reconnection must keep trying every few seconds, not back off towards gRPC's
# two minutes: so a node catches up within seconds of a partition healing.
# Keepalive pings go only while a call (the watch) is open, and well apart
# from etcd's --grpc-keepalive-min-time (5 s), below which etcd hangs up.
_RECOVERY_OPTIONS = [
    ("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.min_reconnect_backoff_ms", 2000),     # also the connect attempt's deadline
]


def _options(endpoint: EtcdEndpoint) -> list[tuple[str, object]]:
    # Over a unix socket gRPC would name the path as the TLS server name;
    # etcd's certificate names localhost (calicopy.pki puts it in every one).
    if endpoint.scheme == "unixs":
        return _RECOVERY_OPTIONS + [("grpc.ssl_target_name_override", "localhost"),
                                    ("grpc.default_authority", "localhost")]
    return list(_RECOVERY_OPTIONS)


class EtcdStore:
    """A Store backed by etcd. Safe to share between threads.

    ``endpoints`` are the members' client URLs (calicopy.config.EtcdEndpoint);
    ``tls`` the files presented to those that use TLS (its certificate's
    common name is the etcd user, with etcd's client-certificate
    authentication). When those files change, the next call reconnects with
    them, so rotation needs no restart.
    """

    RECHECK = 5.0       # seconds between looks at the TLS files

    def __init__(self, endpoints: list, timeout: float = 5.0, tls=None):
        self._members = [e if isinstance(e, EtcdEndpoint) else EtcdEndpoint("http", *e)
                         for e in endpoints]
        self.endpoints = ",".join(str(e) for e in self._members)
        self.timeout, self.tls = timeout, tls
        if tls is None and any(e.tls for e in self._members):
            raise ConfigError(f"etcd endpoint(s) {self.endpoints} use TLS: set "
                              "ETCD_CA_CERT_FILE, ETCD_CERT_FILE and ETCD_KEY_FILE.")
        self._lock = threading.Lock()
        self._client = self._connect()

    @classmethod
    def from_env(cls, explicit_endpoints: str | None = None, timeout: float = 5.0,
                 environ=None) -> "EtcdStore":
        """The etcd this process's configuration names (ETCD_ENDPOINTS and the
        ETCD_*_FILE parameters)."""
        return cls(config.ETCD_ENDPOINTS.resolve(explicit_endpoints, environ), timeout,
                   config.etcd_tls_files(environ))

    def _connect(self):
        self._stamp = self.tls.stamp() if self.tls else None
        self._checked = time.monotonic()
        creds = None
        if self.tls is not None and any(e.tls for e in self._members):
            from calicopy.tls import channel_credentials
            creds = channel_credentials(self.tls)
        return pyetcd.MultiEndpointEtcd3Client(
            endpoints=[pyetcd.Endpoint(e.host, e.port, secure=e.tls,
                                       creds=creds if e.tls else None,
                                       time_retry=_ENDPOINT_RETRY, opts=_options(e))
                       for e in self._members],
            timeout=self.timeout, failover=True)

    @property
    def _live(self):
        """The client, reconnected first if the TLS files changed."""
        if self.tls is not None and time.monotonic() - self._checked > self.RECHECK:
            with self._lock:
                self._checked = time.monotonic()
                if self.tls.stamp() != self._stamp:
                    old, self._client = self._client, self._connect()
                    old.close()
        return self._client

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
            if exc.code() in (grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.UNAUTHENTICATED):
                who = self.tls.identity if self.tls else "an anonymous client"
                raise PermissionDenied(f"etcd ({self.endpoints}) refused {who}: "
                                       f"{exc.details()}.") from None
            raise

    def check(self) -> None:
        """Raise DatastoreUnavailable unless etcd answers."""
        self._call(self._live.status)

    def snapshot(self, prefix: str) -> tuple[int, list[KV]]:
        """Every key under ``prefix`` and the revision they are consistent at."""
        resp = self._call(self._live.get_prefix_response, prefix, sort_order="ascend",
                          sort_target="key")
        return resp.header.revision, [KV(kv.key.decode(), kv.value.decode(), kv.mod_revision)
                                      for kv in resp.kvs]

    def get(self, key: str) -> KV | None:
        value, meta = self._call(self._live.get, key)
        if meta is None:
            return None
        return KV(key, value.decode(), meta.mod_revision)

    def list(self, prefix: str) -> list[KV]:
        got = self._call(self._live.get_prefix, prefix, sort_order="ascend",
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
        client = self._live
        try:
            return client.kvstub.Txn(request, client.timeout,
                                     credentials=client.call_credentials,
                                     metadata=client.metadata)
        except grpc.RpcError as exc:
            client._manage_grpc_errors(exc)  # pyetcd's failover and error mapping

    def grant_lease(self, ttl: int) -> int:
        return self._call(self._live.lease, ttl).id

    def refresh_lease(self, lease: int) -> bool:
        responses = self._call(lambda: list(self._live.refresh_lease(lease)))
        return all(r.TTL > 0 for r in responses)

    def watch(self, prefix: str, on_event, start_revision: int = 0) -> PrefixWatch:
        """Watch ``prefix`` (from ``start_revision``, else from now): see
        calicopy.datastore.etcd_watch for what ``on_event`` gets, including
        exactly one WatchEnded whatever ends the watch."""
        try:
            return self._call(PrefixWatch, self._live, prefix, on_event, start_revision,
                              self.timeout)
        except WatchFailed as exc:
            if "permission denied" in exc.reason:
                who = self.tls.identity if self.tls else "an anonymous client"
                raise PermissionDenied(f"etcd ({self.endpoints}) refused {who} a watch of "
                                       f"{prefix}: {exc.reason}.") from None
            raise DatastoreUnavailable(self.endpoints, f"no watch of {prefix}: "
                                                       f"{exc.reason}") from None

    def cancel_watch(self, handle: PrefixWatch) -> None:
        handle.cancel()

    def delete_prefix(self, prefix: str) -> int:
        resp = self._call(self._live.delete_prefix, prefix)
        return resp.deleted
