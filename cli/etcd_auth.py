"""Switch on etcd's own authentication with calico-py's users and roles.

Usage:
  calicoctl etcd-auth enable

`etcd-auth enable` connects to etcd as the operator (ETCD_ENDPOINTS, and the
admin certificate: ETCD_*_FILE, else CALICO_TLS_*_FILE, else the certificate
folder's), makes the users root and admin (role root) and one per service,
whose roles let each write only its own records (service:ipam the IPAM
records; service:policy profiles and endpoints' profile lists;
service:bgp nodes, peers and settings), then switches authentication on.
etcd must require client certificates (--client-cert-auth): it takes each
user's name from the certificate's common name. `calicoctl node` then makes
each node's user, which may write only under its own host's prefix. Running
it again changes nothing.
"""

from __future__ import annotations

from calicopy.datastore import etcd_auth
from calicopy.datastore.etcd import EtcdStore


def run(args: dict) -> None:
    store = EtcdStore.from_env()
    try:
        etcd_auth.enable(store)
    finally:
        store.close()
    print(f"etcd at {store.endpoints}: users admin, root, "
          f"{', '.join(etcd_auth.SERVICES)} and their roles are in place; "
          "authentication is on.")
