"""IP pools: validation, the pool value and the registry of pools in etcd.

Pools of one family never overlap. Creating or deleting a pool also bumps a
shared ``pools-rev`` key inside the same transaction, so two callers creating
overlapping pools at the same moment cannot both pass the overlap check.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import zlib
from typing import Iterator

from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store, Txn, retry
from services.ipam.errors import InvalidInput, PoolConflict, PoolExists, PoolNotFound

Network = keys.Network

DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}


def parse_cidr(text: str) -> tuple[Network, bool]:
    """Parse a pool CIDR; a bare address is a /32 or /128.

    Returns the network and whether host bits had to be cleared to get it.
    """
    text = (text or "").strip()
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidInput(f"Invalid CIDR '{text}'.") from None
    return iface.network, iface.ip != iface.network.network_address


def within(net: Network, outer: Network) -> bool:
    """``net`` lies inside ``outer`` (False across IP versions, never an error)."""
    return net.version == outer.version and net.subnet_of(outer)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        raise InvalidInput(f"Invalid IP address '{text}'.") from None


@dataclasses.dataclass
class Pool:
    cidr: Network
    block_size: int
    nat_outgoing: bool = False
    ipip: bool = False
    disabled: bool = False

    @classmethod
    def new(cls, cidr: Network, block_size: int = 0, **flags) -> "Pool":
        low, high = BLOCK_SIZE_RANGE[cidr.version]
        if not block_size:
            block_size = max(DEFAULT_BLOCK_SIZE[cidr.version], cidr.prefixlen)
        elif not low <= block_size <= high:
            raise InvalidInput(
                f"Invalid block size {block_size} for an IPv{cidr.version} pool: "
                f"it must be between {low} and {high}.")
        if block_size < cidr.prefixlen:
            raise InvalidInput(
                f"Block size /{block_size} is larger than the pool {cidr} itself.")
        return cls(cidr, block_size, **flags)

    @property
    def version(self) -> int:
        return self.cidr.version

    @property
    def num_blocks(self) -> int:
        return 1 << (self.block_size - self.cidr.prefixlen)

    def block_of(self, ip) -> Network:
        return ipaddress.ip_network(f"{ip}/{self.block_size}", strict=False)

    def blocks_from(self, seed: str) -> Iterator[Network]:
        """Every block of the pool once, starting at a place derived from ``seed``
        so that hosts claiming at the same moment tend to try different blocks."""
        n = self.num_blocks
        start = zlib.crc32(seed.encode()) % n
        step = 1 << (self.cidr.max_prefixlen - self.block_size)
        base = int(self.cidr.network_address)
        addr_cls = type(self.cidr.network_address)
        for i in range(n):
            first = addr_cls(base + ((start + i) % n) * step)
            yield ipaddress.ip_network(f"{first}/{self.block_size}")

    def to_json(self) -> dict:
        return {"cidr": str(self.cidr), "block_size": self.block_size,
                "nat_outgoing": self.nat_outgoing, "ipip": self.ipip,
                "disabled": self.disabled}

    @classmethod
    def from_json(cls, data: dict) -> "Pool":
        return cls(ipaddress.ip_network(data["cidr"]), int(data["block_size"]),
                   bool(data.get("nat_outgoing")), bool(data.get("ipip")),
                   bool(data.get("disabled")))


class PoolRegistry:
    """The pools stored in etcd."""

    def __init__(self, store: Store):
        self.store = store

    def list(self, version: int | None = None) -> list[tuple[Pool, KV]]:
        found = [(Pool.from_json(kv.json()), kv)
                 for kv in self.store.list(keys.pools_prefix(version))]
        return sorted(found, key=lambda p: (p[0].version, p[0].cidr))

    def get(self, cidr: Network) -> tuple[Pool, KV] | None:
        kv = self.store.get(keys.pool(cidr))
        return (Pool.from_json(kv.json()), kv) if kv else None

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
