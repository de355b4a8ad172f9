"""Watches that end are always reported, and the watch loop rebuilds from a
fresh snapshot after any end (real etcd, with its authentication on)."""

import logging
import threading

import pytest
from pyetcd import etcdrpc

from calicopy import config
from calicopy.datastore import etcd_auth, keys
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import Txn
from calicopy.datastore.watchloop import WatchLoop
from calicopy.errors import PermissionDenied
from tests.conftest import identity_files
from tests.system.helpers import wait_for

NEVER = 3600.0      # poll and resync: a change must come through the watch


def put(store, key, value):
    assert store.commit(Txn().put(key, store.get(key), value))


def test_a_watch_etcd_cancels_for_compaction_reports_its_end(store):
    put(store, keys.BGP_AS, 64000)
    old = store.snapshot(keys.PREFIX)[0]
    put(store, keys.BGP_AS, 64001)
    put(store, keys.BGP_AS, 64002)
    client = store._live
    client.compact(store.snapshot(keys.PREFIX)[0])
    ends = []
    ended = threading.Event()

    def on_event(response):
        if getattr(response, "events", None) is None:
            ends.append(response)
            ended.set()
    handle = store.watch(keys.PREFIX, on_event, start_revision=old)
    try:
        assert ended.wait(30), "the end of a watch etcd cancelled was never reported"
        assert "compacted" in str(ends[0])
    finally:
        store.cancel_watch(handle)


@pytest.fixture
def unprivileged(store, etcd, pki_dir):
    """etcd as node:watcher, a user that does not yet have any role; grant()
    gives it the node's usual rights (read /calico/)."""
    name = "node:watcher"
    admin = store._live
    try:
        admin.authstub.UserAdd(etcdrpc.AuthUserAddRequest(name=name, password="x" * 24),
                               admin.timeout, credentials=admin.call_credentials,
                               metadata=admin.metadata)
    except Exception:           # left by an interrupted run
        pass
    watcher = EtcdStore(config.ETCD_ENDPOINTS.resolve(etcd), tls=identity_files(pki_dir, name))
    try:
        yield watcher, lambda: etcd_auth.ensure_node(store, "watcher")
    finally:
        watcher.close()
        for method, request in (
                ("UserDelete", etcdrpc.AuthUserDeleteRequest(name=name)),
                ("RoleDelete", etcdrpc.AuthRoleDeleteRequest(role="calico-node-watcher"))):
            try:
                getattr(admin.authstub, method)(request, admin.timeout,
                                                credentials=admin.call_credentials,
                                                metadata=admin.metadata)
            except Exception:
                pass


def test_a_watch_etcd_refuses_is_an_error_not_a_dead_watch(unprivileged):
    watcher, _ = unprivileged
    with pytest.raises(PermissionDenied, match="node:watcher"):
        watcher.watch(keys.PREFIX, lambda response: None)


def test_the_loop_rebuilds_a_watch_etcd_refused_and_then_sees_changes_at_once(store,
                                                                               unprivileged):
    """The loop starts while etcd refuses its user; once allowed, a change
    reaches it through the watch (poll and resync are an hour away)."""
    watcher, grant = unprivileged
    seen = []

    def sync(full, events):
        got = watcher.get(keys.BGP_AS)
        seen.append(got.json() if got else None)

    log = logging.getLogger("test-watch-loop")
    problems = []
    handler = logging.Handler()
    handler.emit = problems.append
    log.addHandler(handler)
    loop = WatchLoop(watcher, keys.PREFIX, sync, log=log, resync=NEVER, poll=NEVER)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for("the loop to be refused", lambda: problems)   # no read permission yet
        grant()
        wait_for("the loop's first pass", lambda: seen)
        put(store, keys.BGP_AS, 64123)
        wait_for("the change to arrive through the watch", lambda: 64123 in seen)
    finally:
        stop.set()
        loop.changed.set()
        thread.join(timeout=10)
        log.removeHandler(handler)


def test_a_snapshot_larger_than_a_grpc_message_comes_whole_at_one_revision(store):
    """6 MB under one prefix (gRPC refuses answers over 4 MB): read in pages,
    all at the revision of the first."""
    prefix = keys.CONFIG + "paging-test/"
    big = "x" * 100_000
    try:
        for n in range(0, 60, 10):
            txn = Txn()
            for k in range(n, n + 10):
                txn.create(f"{prefix}{k:03d}", big)
            assert store.commit(txn)
        revision, kvs = store.snapshot(prefix)
        assert [kv.key for kv in kvs] == [f"{prefix}{k:03d}" for k in range(60)]
        assert all(kv.value == big for kv in kvs)
        assert revision == store.snapshot(keys.PREFIX)[0]
        assert store.list(prefix + "01") == kvs[10:20]
    finally:
        store.delete_prefix(prefix)
