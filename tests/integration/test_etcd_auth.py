"""etcd's own users and roles: each identity writes only its share (real etcd)."""

import threading

import pytest
from pyetcd import etcdrpc

from calicopy import config
from calicopy.datastore import etcd_auth, keys
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import Txn
from calicopy.errors import PermissionDenied
from tests.conftest import identity_files


def as_identity(etcd, pki_dir, identity) -> EtcdStore:
    return EtcdStore(config.ETCD_ENDPOINTS.resolve(etcd), tls=identity_files(pki_dir, identity))


@pytest.fixture
def as_node(store, etcd, pki_dir):
    """etcd as node:<name> (its user made as `calicoctl node` makes it)."""
    opened = []

    def connect(name):
        etcd_auth.ensure_node(store, name)
        s = as_identity(etcd, pki_dir, f"node:{name}")
        opened.append(s)
        return s
    yield connect
    for s in opened:
        s.close()


def test_a_node_writes_only_under_its_own_prefix(store, as_node):
    a = as_node("a")
    mine = keys.endpoint("a", "netns", "w1", "0" * 32)
    assert a.commit(Txn().create(mine, {"state": "active"}))
    theirs = keys.endpoint("b", "netns", "w1", "1" * 32)
    block = keys.IPAM + "block/v4/10.0.0.0-26"
    for key in (theirs, keys.node("b"), block, keys.profile_rules("web"), keys.BGP_AS):
        with pytest.raises(PermissionDenied, match="node:a"):
            a.commit(Txn().create(key, "{}"))
    assert store.get(theirs) is None and store.get(block) is None
    assert [kv.key for kv in a.list(keys.HOSTS)] == [mine]     # it reads what a node needs


def test_a_node_cannot_change_another_node_s_record_it_can_read(store, as_node):
    store.commit(Txn().create(keys.node("b"), {"name": "b", "ipv4": "10.0.0.2"}))
    a = as_node("a")
    kv = a.get(keys.node("b"))
    assert kv is not None
    with pytest.raises(PermissionDenied):
        a.commit(Txn().update(kv, {"name": "b", "ipv4": "10.0.0.66"}))
    with pytest.raises(PermissionDenied):
        a.commit(Txn().delete(kv))
    assert store.get(keys.node("b")).json()["ipv4"] == "10.0.0.2"


def test_services_write_only_their_records(store, etcd, pki_dir):
    ipam = as_identity(etcd, pki_dir, "service:ipam")
    try:
        assert ipam.commit(Txn().create(keys.IPAM + "handle/x", "{}"))
        with pytest.raises(PermissionDenied, match="service:ipam"):
            ipam.commit(Txn().create(keys.profile_tags("web"), "[]"))
    finally:
        ipam.close()


def test_requests_racing_a_change_of_users_succeed(store, as_node):
    """Nodes joining change etcd's users and roles; etcd refuses a request
    that was checked against the previous ones ("revision of auth store is
    old", not applied): every process's requests must go through anyway."""
    a = as_node("racer")
    stop = threading.Event()
    failures, joined = [], []

    def churn():
        while not stop.is_set():
            joined.append(f"joiner{len(joined) + 1}")
            etcd_auth.ensure_node(store, joined[-1])

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for i in range(150):
            try:
                a.commit(Txn().put(keys.endpoint("racer", "netns", f"w{i}", "0" * 32), None,
                                   {"state": "active"}))
                a.list(keys.host("racer"))
            except Exception as exc:        # noqa: BLE001 - collected, then asserted
                failures.append(repr(exc))
    finally:
        stop.set()
        thread.join()
        for name in joined:         # what churn made: its users and roles
            store.call("Auth", "UserDelete", etcdrpc.AuthUserDeleteRequest(name=f"node:{name}"))
            store.call("Auth", "RoleDelete", etcdrpc.AuthRoleDeleteRequest(
                role=f"calico-node-{name}"))
    assert failures == []
