"""The Store interface over a real etcd v3 cluster (through pyetcd), plaintext or TLS.

A snapshot of a prefix is read in pages (``PAGE`` keys each, fewer while a
page of large values would exceed gRPC's message size limit) at the
revision of its first page, so a prefix of any size comes whole and
consistent.

Every call fails over between the cluster's members (ETCD_ENDPOINTS) within
one budget (``timeout``): a member that refuses the connection, has lost its
leader (each request asks for one: etcd's ``hasleader``) or does not answer
is skipped and the call tried on the next, until one answers or the budget
is spent (DatastoreUnavailable). A transaction whose answer was lost (the
member died with it in flight) is tried again and its outcome read back, so
it is applied at most once and its caller learns whether it was: every key a
Txn writes carries a compare, so a second copy can never apply after the
first.
"""

from __future__ import annotations

import threading
import time

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc
from pyetcd import utils as etcd_utils

from calicopy import config
from calicopy.config import ConfigError, EtcdEndpoint
from calicopy.datastore.etcd_watch import PrefixWatch, WatchFailed
from calicopy.datastore.store import KV, DatastoreUnavailable, LeaseExpired, Txn
from calicopy.errors import PermissionDenied

# Seconds a failed member is skipped before it is tried again; pyetcd's own
# default (300 s) would make a service blind for minutes after etcd restarts.
_ENDPOINT_RETRY = 0.5
# Seconds of a write's first try; later tries double it. A write that a
# follower passed to a leader that has just died is lost with it and would
# hang until its deadline: this bounds that wait, so the write moves on to a
# member with the new leader (an etcd request takes milliseconds). A read
# waits for the new leader by itself: its first try has the whole budget.
_FIRST_TRY = 1.0
# etcd's metadata asking a member to refuse requests while it has no leader
# (and to end watches when it loses it) instead of holding them.
_REQUIRE_LEADER = (("hasleader", "true"),)
_FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# What a member says, with another status (UNKNOWN), when it could not take a
# request just now (no leader to propose it to, too busy): not applied...
_NOT_TAKEN = ("proposal dropped", "too many requests")
# ... or when its leader was lost with the request under way: maybe applied.
_LOST = ("context deadline exceeded", "leader changed", "request timed out")
# What a member says (INVALID_ARGUMENT) when etcd's users or roles changed
# between checking a request's permissions and applying it (a node joining
# makes its user): refused, not applied, and fine to send again at once to the
# same member, as etcd's own client does.
_AUTH_CHANGED = "revision of auth store is old"


def _auth_changed(exc: grpc.RpcError) -> bool:
    return _AUTH_CHANGED in (exc.details() or "")


def _transient(exc: grpc.RpcError) -> bool:
    return exc.code() in _FAILOVER_CODES or \
        any(sign in (exc.details() or "") for sign in _NOT_TAKEN + _LOST)


# A connection whose packets are being dropped (a partition) must be given up
# within seconds, not after TCP's retransmissions give up (minutes), and a
# member that was down (or a healed partition) must be reached again within
# seconds, not after gRPC's back-off towards two minutes. Keepalive pings go
# only while a call (the watch) is open, and well apart from etcd's
# --grpc-keepalive-min-time (5 s), below which etcd hangs up.
_RECOVERY_OPTIONS = [
    ("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.min_reconnect_backoff_ms", 2000),     # also the connect attempt's deadline
]


def _options(endpoint: EtcdEndpoint) -> list[tuple[str, object]]:
    # Over a unix socket gRPC would name the path as the TLS server name;
    # etcd's certificate names localhost (calicopy.pki puts it in every one).
    if endpoint.scheme == "unixs":
        return _RECOVERY_OPTIONS + [("grpc.ssl_target_name_override", "localhost"),
                                    ("grpc.default_authority", "localhost")]
    return list(_RECOVERY_OPTIONS)


class _Failed(Exception):
    """One try failed in a way another member (or a later try) may not."""

    def __init__(self, why: str, maybe_applied: bool):
        super().__init__(why)
        self.maybe_applied = maybe_applied


class EtcdStore:
    """A Store backed by etcd. Safe to share between threads.

    ``endpoints`` are the members' client URLs (calicopy.config.EtcdEndpoint);
    ``timeout`` the seconds each call may take, fail-over included; ``tls``
    the files presented to those that use TLS (its certificate's common name
    is the etcd user, with etcd's client-certificate authentication). When
    those files change, the next call reconnects with them, so rotation needs
    no restart.
    """

    RECHECK = 5.0       # seconds between looks at the TLS files
    PAGE = 1000         # keys per answer of a snapshot

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
        client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[pyetcd.Endpoint(e.host, e.port, secure=e.tls,
                                       creds=creds if e.tls else None,
                                       time_retry=_ENDPOINT_RETRY, opts=_options(e))
                       for e in self._members],
            timeout=self.timeout, failover=True)
        client.metadata = _REQUIRE_LEADER     # for the calls and watches pyetcd makes
        return client

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

    # Fail-over ------------------------------------------------------------------

    def _call(self, fn, resolve=None, write: bool = False):
        """``fn(client, timeout)`` on a member that answers, within the budget.

        ``resolve(client, timeout)``, for a transaction, says after a try
        whose answer was lost whether that try was applied: its result, or
        None to try again.
        """
        deadline = time.monotonic() + self.timeout
        tries, why, maybe_applied = 0, "", False
        while True:
            left = deadline - time.monotonic()
            if tries and left <= 0.01:
                raise DatastoreUnavailable(self.endpoints, why)
            attempt = left if not (tries or write) else \
                min(left, _FIRST_TRY * 2 ** max(0, tries - 1))
            tries += 1
            client = self._live
            try:
                if maybe_applied and resolve is not None:
                    done = resolve(client, attempt)
                    if done is not None:
                        return done
                    maybe_applied = False
                return fn(client, attempt)
            except _Failed as exc:
                why, maybe_applied = str(exc), maybe_applied or exc.maybe_applied
            except etcd_exc.NoServerAvailableError:
                # Every member failed within the last moments: wait for one.
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError) as exc:
                # From pyetcd's own calls, which marked the member failed.
                why = _details(exc)
            except grpc.RpcError as exc:       # from pyetcd's calls it does not wrap
                self._raise_refusal(exc)
                if _auth_changed(exc):
                    why = exc.details()
                    continue
                if not _transient(exc):
                    raise
                self._fail(client)
                why = exc.details() or exc.code().name

    def _try(self, client, stub: str, method: str, request, timeout: float):
        """One unary call to the member in use; a failure another member may
        not have marks it failed and raises _Failed."""
        call = getattr(getattr(client, stub), method)
        try:
            return call(request, timeout, credentials=client.call_credentials,
                        metadata=_REQUIRE_LEADER)
        except grpc.RpcError as exc:
            self._raise_refusal(exc)
            if _auth_changed(exc):          # the member is fine: try it again
                raise _Failed(exc.details(), False) from None
            if not _transient(exc):
                raise
            self._fail(client)
            # Refused before it was sent, or not taken: certainly not applied.
            details = exc.details() or exc.code().name
            taken = "failed to connect" not in details and \
                not any(sign in details for sign in _NOT_TAKEN)
            raise _Failed(details, taken) from None

    @staticmethod
    def _fail(client) -> None:
        try:
            client.endpoint_in_use.fail()
            client._clear_old_stubs()       # pyetcd's own fail-over step
        except Exception:                   # another thread switched already
            pass

    def _raise_refusal(self, exc: grpc.RpcError) -> None:
        if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            who = self.tls.identity if self.tls else "an anonymous client"
            raise PermissionDenied(f"etcd ({self.endpoints}) refused {who}: "
                                   f"{exc.details()}.") from None

    # The Store -----------------------------------------------------------------

    def check(self) -> None:
        """Raise DatastoreUnavailable unless etcd answers."""
        self._call(lambda c, t: self._try(c, "maintenancestub", "Status",
                                          etcdrpc.StatusRequest(), t))

    def _range(self, key: str, prefix: bool):
        request = etcdrpc.RangeRequest(key=key.encode())
        if prefix:
            request.range_end = etcd_utils.prefix_range_end(key.encode())
            request.sort_order = etcdrpc.RangeRequest.ASCEND
            request.sort_target = etcdrpc.RangeRequest.KEY
        return self._call(lambda c, t: self._try(c, "kvstub", "Range", request, t))

    def snapshot(self, prefix: str) -> tuple[int, list[KV]]:
        """Every key under ``prefix`` and the revision they are consistent at:
        page after page, each read at the revision of the first (read again
        from the start if etcd compacted that revision meanwhile)."""
        request = etcdrpc.RangeRequest(
            key=prefix.encode(), range_end=etcd_utils.prefix_range_end(prefix.encode()),
            limit=self.PAGE, sort_order=etcdrpc.RangeRequest.ASCEND,
            sort_target=etcdrpc.RangeRequest.KEY)
        found: list[KV] = []
        while True:
            try:
                resp = self._call(lambda c, t: self._try(c, "kvstub", "Range", request, t))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and request.limit > 1:
                    request.limit //= 2         # an answer too large: smaller pages
                    continue
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE or not request.revision:
                    raise
                request.key, request.revision, found = prefix.encode(), 0, []
                continue
            request.revision = request.revision or resp.header.revision
            found += [KV(kv.key.decode(), kv.value.decode(), kv.mod_revision)
                      for kv in resp.kvs]
            if not resp.more or not resp.kvs:
                return request.revision, found
            request.key = resp.kvs[-1].key + b"\0"

    def get(self, key: str) -> KV | None:
        resp = self._range(key, prefix=False)
        if not resp.kvs:
            return None
        return KV(key, resp.kvs[0].value.decode(), resp.kvs[0].mod_revision)

    def list(self, prefix: str) -> list[KV]:
        return self.snapshot(prefix)[1]

    def commit(self, txn: Txn) -> int:
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

        def once(client, timeout):
            try:
                response = self._try(client, "kvstub", "Txn", request, timeout)
            except grpc.RpcError as exc:
                if "lease not found" in (exc.details() or ""):
                    raise LeaseExpired(next(iter(txn.leases.values()))) from None
                raise
            return response.header.revision if response.succeeded else 0

        def applied(client, timeout):
            """After a lost answer: the revision our earlier try was applied
            at, 0 if it was not and cannot be now (a compare fails), None if
            it was not and may be tried again."""
            read = self._try(client, "kvstub", "Txn", _read_back(txn), timeout)
            if read.succeeded or not (txn.puts or txn.deletes):
                return None        # had it applied, a compare on a key it wrote would fail
            found = [r.response_range.kvs for r in read.responses]
            puts, deletes = found[:len(txn.puts)], found[len(txn.puts):]
            revisions = {kvs[0].mod_revision for kvs in puts if kvs}
            if all(kvs and kvs[0].value == v.encode() for kvs, v in zip(puts, txn.puts.values())) \
                    and len(revisions) <= 1 and not any(deletes):
                return revisions.pop() if revisions else read.header.revision
            return 0

        return self._call(once, resolve=applied, write=True)

    def grant_lease(self, ttl: int) -> int:
        return self._call(lambda c, t: self._try(
            c, "leasestub", "LeaseGrant", etcdrpc.LeaseGrantRequest(TTL=ttl), t), write=True).ID

    def refresh_lease(self, lease: int) -> bool:
        def keepalive(client, timeout):
            try:
                responses = list(client.leasestub.LeaseKeepAlive(
                    iter([etcdrpc.LeaseKeepAliveRequest(ID=lease)]), timeout,
                    credentials=client.call_credentials, metadata=_REQUIRE_LEADER))
            except grpc.RpcError as exc:
                self._raise_refusal(exc)
                if not _transient(exc):
                    raise
                self._fail(client)
                raise _Failed(exc.details() or exc.code().name, False) from None
            return all(r.TTL > 0 for r in responses)
        return self._call(keepalive)

    def watch(self, prefix: str, on_event, start_revision: int = 0) -> PrefixWatch:
        """Watch ``prefix`` (from ``start_revision``, else from now) on a member
        that answers: see calicopy.datastore.etcd_watch for what ``on_event``
        gets, including exactly one WatchEnded whatever ends the watch."""
        def start(client, timeout):
            try:
                return PrefixWatch(client, prefix, on_event, start_revision, timeout)
            except WatchFailed as exc:
                if "permission denied" in exc.reason:
                    who = self.tls.identity if self.tls else "an anonymous client"
                    raise PermissionDenied(f"etcd ({self.endpoints}) refused {who} a watch of "
                                           f"{prefix}: {exc.reason}.") from None
                self._fail(client)
                raise _Failed(f"no watch of {prefix}: {exc.reason}", False) from None
        return self._call(start)

    def cancel_watch(self, handle: PrefixWatch) -> None:
        handle.cancel()

    def delete_prefix(self, prefix: str) -> int:
        request = etcdrpc.DeleteRangeRequest(
            key=prefix.encode(), range_end=etcd_utils.prefix_range_end(prefix.encode()))
        return self._call(lambda c, t: self._try(c, "kvstub", "DeleteRange", request, t),
                          write=True).deleted

    def call(self, service: str, method: str, request):
        """A call of one of etcd's own services, ``Auth``
        (calicopy.datastore.etcd_auth) or ``Maintenance``, with fail-over."""
        stub = {"Auth": "authstub", "Maintenance": "maintenancestub"}[service]
        return self._call(lambda c, t: self._try(c, stub, method, request, t),
                          write=service == "Auth")

    def status(self) -> dict:
        """The answering member's view: its id, its leader's, the revision,
        and its database's size: of the file, and in use (bytes; what
        defragmentation would leave)."""
        resp = self._call(lambda c, t: self._try(c, "maintenancestub", "Status",
                                                 etcdrpc.StatusRequest(), t))
        return {"member": resp.header.member_id, "leader": resp.leader,
                "revision": resp.header.revision, "db_size": resp.dbSize,
                "db_size_in_use": _unknown_field(resp, _DB_SIZE_IN_USE)}


def _read_back(txn: Txn) -> etcdrpc.TxnRequest:
    """A read-only transaction: succeeds if every compare of ``txn`` still
    holds, and reads each key it puts, then each it deletes."""
    compares = [etcdrpc.Compare(key=c.key.encode(), result=etcdrpc.Compare.EQUAL,
                                target=etcdrpc.Compare.VERSION, version=0)
                if c.mod_revision == 0 else
                etcdrpc.Compare(key=c.key.encode(), result=etcdrpc.Compare.EQUAL,
                                target=etcdrpc.Compare.MOD, mod_revision=c.mod_revision)
                for c in txn.compares]
    reads = [etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=k.encode()))
             for k in list(txn.puts) + list(txn.deletes)]
    return etcdrpc.TxnRequest(compare=compares, success=reads, failure=reads)


# StatusResponse.dbSizeInUse (etcd 3.4), newer than pyetcd's copy of the proto.
_DB_SIZE_IN_USE = 9


def _unknown_field(message, number: int) -> int:
    from google.protobuf import unknown_fields
    for field in unknown_fields.UnknownFieldSet(message):
        if field.field_number == number:
            return field.data
    return 0


def _details(exc: Exception) -> str:
    """What gRPC said under one of pyetcd's exceptions, which say little."""
    cause = exc.__context__
    if isinstance(cause, grpc.RpcError):
        return cause.details() or cause.code().name
    return str(exc) or type(exc).__name__
