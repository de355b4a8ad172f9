"""The registry of IP pools in etcd.

Pools of one family never overlap. Creating or deleting a pool also bumps a
shared ``pools-rev`` key inside the same transaction, so two callers creating
overlapping pools at the same moment cannot both pass the overlap check.
"""

from __future__ import annotations

import logging

from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store, Txn, retry
from calicopy.model.ipam import Network, Pool
from calicopy.model.record import BadRecord, decode
from calicopy.quarantine import Quarantine
from services.ipam.errors import PoolConflict, PoolExists, PoolNotFound

log = logging.getLogger("calico-ipam")


class PoolRegistry:
    """The pools stored in etcd."""

    def __init__(self, store: Store):
        self.store = store
        # A malformed pool record is left out of listings, as if absent, and
        # logged once; reading it by name says what is wrong with it.
        self.quarantine = Quarantine(log)

    def list(self, version: int | None = None) -> list[tuple[Pool, KV]]:
        prefix = keys.pools_prefix(version)
        found, bad = [], {}
        for kv in self.store.list(prefix):
            try:
                found.append((decode(kv, Pool.from_json), kv))
            except BadRecord as exc:
                bad[exc.key] = exc.why
        self.quarantine.update(prefix, bad)
        return sorted(found, key=lambda p: (p[0].version, p[0].cidr))

    def get(self, cidr: Network) -> tuple[Pool, KV] | None:
        kv = self.store.get(keys.pool(cidr))
        return (decode(kv, Pool.from_json), kv) if kv else None

    def require(self, cidr: Network) -> tuple[Pool, KV]:
        found = self.get(cidr)
        if not found:
            raise PoolNotFound(cidr)
        return found

    def containing(self, ip) -> tuple[Pool, KV] | None:
        for pool, kv in self.list(ip.version):
            if ip in pool.cidr:
                return pool, kv
        return None

    def create(self, pool: Pool) -> Pool:
        def attempt():
            rev = self.store.get(keys.POOLS_REV)
            for other, _ in self.list(pool.version):
                if other.cidr == pool.cidr:
                    raise PoolExists(pool.cidr)
                if other.cidr.overlaps(pool.cidr):
                    raise PoolConflict(
                        f"Pool {pool.cidr} overlaps the existing pool {other.cidr}.")
            txn = Txn().create(keys.pool(pool.cidr), pool.to_json())
            txn.put(keys.POOLS_REV, rev, str(pool.cidr))
            return pool if self.store.commit(txn) else None
        return retry(f"creating pool {pool.cidr}", attempt)

    def update(self, cidr: Network, **flags) -> tuple[Pool, KV]:
        def attempt():
            pool, kv = self.require(cidr)
            for name, value in flags.items():
                if value is not None:
                    setattr(pool, name, value)
            if not self.store.commit(Txn().update(kv, pool.to_json())):
                return None
            return self.require(cidr)
        return retry(f"updating pool {cidr}", attempt)

    def delete(self, kv: KV) -> bool:
        rev = self.store.get(keys.POOLS_REV)
        return self.store.commit(Txn().delete(kv).put(keys.POOLS_REV, rev, "deleted"))
