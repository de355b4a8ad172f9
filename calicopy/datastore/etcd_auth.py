"""etcd's own users and roles for calico-py: each identity writes only its share.

With etcd's authentication on and client-certificate authentication
(``--client-cert-auth``), etcd takes a TLS client's user name from its
certificate's common name, so the identities of calicopy.pki are etcd users:

- ``admin``: the ``root`` role (everything; ``calicoctl reset``, ``diags``);
- ``service:ipam``: reads /calico/, writes the IPAM records;
- ``service:policy``: reads /calico/, writes profiles and endpoints' profile lists;
- ``service:bgp``: reads /calico/, writes nodes, peers and BGP settings;
- ``node:<name>``: reads /calico/, writes only under /calico/v1/host/<name>/
  (its endpoints, status and progress). It cannot write another node's
  records, nor any IPAM block: those change only through the IPAM service.

Users get a random password nobody keeps (etcd 3.4 wants one): they log in
with their certificate. Every function here is idempotent and runs with an
admin (root) connection.
"""

from __future__ import annotations

import secrets

from pyetcd import etcdrpc

from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore

READ, READWRITE = etcdrpc.auth_pb2.Permission.READ, etcdrpc.auth_pb2.Permission.READWRITE
ROOT_ROLE = "root"

# identity -> (role, [(permission, key prefix)])
SERVICES = {
    "service:ipam": [(READWRITE, keys.IPAM)],
    "service:policy": [(READWRITE, keys.PREFIX + "policy/"), (READWRITE, keys.HOSTS),
                       (READWRITE, keys.CONFIG)],
    "service:bgp": [(READWRITE, keys.HOSTS), (READWRITE, keys.CONFIG)],
}


def _prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


def _tolerate(call, *exists):
    """Run an auth call; "already exists" (or what ``exists`` names) is fine."""
    try:
        return call()
    except Exception as exc:       # grpc.RpcError; pyetcd maps some to its own types
        text = str(getattr(exc, "details", lambda: "")() or exc)
        if any(word in text for word in ("already exist",) + exists):
            return None
        raise


def _call(store: EtcdStore, method: str, request):
    return store.call("Auth", method, request)       # the admin connection


def ensure_user(store: EtcdStore, user: str, role: str,
                permissions: list[tuple[int, str]]) -> None:
    """User ``user`` with role ``role``: read everything under /calico/, and
    ``permissions`` (permission, key prefix) on top."""
    if role != ROOT_ROLE:
        _tolerate(lambda: _call(store, "RoleAdd", etcdrpc.AuthRoleAddRequest(name=role)))
        for perm, prefix in [(READ, keys.ROOT)] + list(permissions):
            _call(store, "RoleGrantPermission", etcdrpc.AuthRoleGrantPermissionRequest(
                name=role, perm=etcdrpc.auth_pb2.Permission(
                    permType=perm, key=prefix.encode(), range_end=_prefix_end(prefix))))
    _tolerate(lambda: _call(store, "UserAdd", etcdrpc.AuthUserAddRequest(
        name=user, password=secrets.token_urlsafe(24))))
    _tolerate(lambda: _call(store, "UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(
        user=user, role=role)))


def enable(store: EtcdStore) -> None:
    """Users for root, admin and the services, then authentication on."""
    for user in ("root", "admin"):
        ensure_user(store, user, ROOT_ROLE, [])
    for identity, permissions in SERVICES.items():
        ensure_user(store, identity, f"calico-{identity.replace(':', '-')}", permissions)
    _tolerate(lambda: _call(store, "AuthEnable", etcdrpc.AuthEnableRequest()))


def ensure_node(store: EtcdStore, name: str) -> None:
    """The etcd user of node ``name``: writes only under its own host prefix."""
    ensure_user(store, f"node:{name}", f"calico-node-{name}", [(READWRITE, keys.host(name))])
