"""IPAM's records: pools, allocation blocks, handles and block affinities.

A pool is a CIDR with its block size and options. A block is a fixed-size
slice of a pool, as a plain value: it knows which of its addresses are
allocated, to which handle and host, and in what order free addresses are
handed out (released addresses go to the back of the queue, so a just-freed
address is the last to be reused). A handle is the owner of allocations, with
the blocks it holds addresses in, so that release-by-handle touches only
those blocks. A host's affinity for a block is ``pending`` while it claims
it and ``confirmed`` once the block is its own.

Nothing here touches the datastore; callers read a record, change it with
these methods and write it back with a compare-and-swap.

Invariant of a block: every ordinal 0..size-1 is in exactly one of
``unallocated`` and ``allocations``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import zlib
from collections import Counter
from typing import Iterator

from calicopy.datastore import keys
from calicopy.datastore.store import Store
from calicopy.errors import InvalidArgument

Network = keys.Network

#: The states of a host's affinity for a block.
PENDING, CONFIRMED = "pending", "confirmed"


class InvalidInput(InvalidArgument):
    """A CIDR, address, count, handle or host name is malformed."""


# Pools ---------------------------------------------------------------------

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


DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}

#: How a pool's addresses on other hosts are reached: natively (BGP routes
#: through the underlay), always through IP-in-IP, or through IP-in-IP only
#: towards hosts on another subnet. IP-in-IP is IPv4 only.
IPIP_NEVER, IPIP_ALWAYS, IPIP_CROSS_SUBNET = "never", "always", "cross-subnet"
IPIP_MODES = (IPIP_NEVER, IPIP_ALWAYS, IPIP_CROSS_SUBNET)


def check_ipip_mode(mode: str, version: int) -> str:
    if mode not in IPIP_MODES:
        raise InvalidInput(f"Invalid IP-in-IP mode '{mode}': use always, cross-subnet or never.")
    if mode != IPIP_NEVER and version == 6:
        raise InvalidInput("IP-in-IP is IPv4 only: an IPv6 pool cannot use it.")
    return mode
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}


@dataclasses.dataclass
class Pool:
    cidr: Network
    block_size: int
    nat_outgoing: bool = False
    ipip_mode: str = IPIP_NEVER
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
        check_ipip_mode(flags.get("ipip_mode", IPIP_NEVER), cidr.version)
        return cls(cidr, block_size, **flags)

    @property
    def ipip(self) -> bool:
        """Whether the pool is reached through IP-in-IP towards some hosts."""
        return self.ipip_mode != IPIP_NEVER

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
        # "ipip" stays for readers of records made before modes existed.
        return {"cidr": str(self.cidr), "block_size": self.block_size,
                "nat_outgoing": self.nat_outgoing, "ipip": self.ipip,
                "ipip_mode": self.ipip_mode, "disabled": self.disabled}

    @classmethod
    def from_json(cls, data: dict) -> "Pool":
        """Also a record made before modes existed: ``"ipip": true`` is always."""
        mode = data.get("ipip_mode") or (IPIP_ALWAYS if data.get("ipip") else IPIP_NEVER)
        return cls(ipaddress.ip_network(data["cidr"]), int(data["block_size"]),
                   bool(data.get("nat_outgoing")), mode, bool(data.get("disabled")))


def read_pools(store: Store, version: int | None = None) -> list[Pool]:
    """Every pool (of one IP version), sorted."""
    pools = [Pool.from_json(kv.json()) for kv in store.list(keys.pools_prefix(version))]
    return sorted(pools, key=lambda p: (p.version, p.cidr))


# Blocks --------------------------------------------------------------------

def block_host(data: dict) -> str | None:
    """The host a block (in its JSON form) is affine to, without reading the
    rest of it."""
    return (data.get("affinity") or "").removeprefix("host:") or None


@dataclasses.dataclass
class Allocation:
    handle_id: str
    host: str
    attributes: dict[str, str]

    def to_json(self) -> dict:
        return {"handle": self.handle_id, "host": self.host, "attrs": self.attributes}

    @classmethod
    def from_json(cls, data: dict) -> "Allocation":
        return cls(data["handle"], data.get("host", ""), dict(data.get("attrs", {})))


@dataclasses.dataclass
class Block:
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    host: str | None
    unallocated: list[int]
    allocations: dict[int, Allocation]

    @classmethod
    def empty(cls, cidr, host: str | None) -> "Block":
        return cls(cidr, host, list(range(cidr.num_addresses)), {})

    # Serialisation ---------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "cidr": str(self.cidr),
            "affinity": f"host:{self.host}" if self.host else None,
            "unallocated": self.unallocated,
            "allocations": {str(o): a.to_json() for o, a in sorted(self.allocations.items())},
        }

    @classmethod
    def from_json(cls, data: dict) -> "Block":
        return cls(
            ipaddress.ip_network(data["cidr"]),
            block_host(data),
            list(data["unallocated"]),
            {int(o): Allocation.from_json(a) for o, a in data["allocations"].items()},
        )

    # Queries ---------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.cidr.num_addresses

    @property
    def used(self) -> int:
        return len(self.allocations)

    @property
    def free(self) -> int:
        return len(self.unallocated)

    def ip(self, ordinal: int) -> str:
        return str(self.cidr.network_address + ordinal)

    def ordinal(self, ip: str) -> int:
        addr = ipaddress.ip_address(ip)
        if addr not in self.cidr:
            raise InvalidInput(f"{ip} is not in block {self.cidr}.")
        return int(addr) - int(self.cidr.network_address)

    def owner(self, ip: str) -> Allocation | None:
        return self.allocations.get(self.ordinal(ip))

    def handle_counts(self) -> Counter:
        return Counter(a.handle_id for a in self.allocations.values())

    def ips_of(self, handle_id: str) -> list[str]:
        return [self.ip(o) for o, a in sorted(self.allocations.items())
                if a.handle_id == handle_id]

    # Changes ---------------------------------------------------------------

    def allocate(self, count: int, handle_id: str, host: str,
                 attributes: dict[str, str]) -> list[str]:
        """Take up to ``count`` free addresses, oldest-freed first."""
        taken, self.unallocated = self.unallocated[:count], self.unallocated[count:]
        for o in taken:
            self.allocations[o] = Allocation(handle_id, host, dict(attributes))
        return [self.ip(o) for o in taken]

    def assign(self, ip: str, handle_id: str, host: str,
               attributes: dict[str, str]) -> bool:
        """Take one specific address; False if it is allocated already."""
        o = self.ordinal(ip)
        if o in self.allocations:
            return False
        self.unallocated.remove(o)
        self.allocations[o] = Allocation(handle_id, host, dict(attributes))
        return True

    def release(self, ips: list[str], handle_id: str | None = None) -> list[str]:
        """Free the given addresses (only those ``handle_id`` owns, when given).

        Returns the addresses actually freed; the others were not allocated.
        """
        freed = []
        for ip in ips:
            o = self.ordinal(ip)
            alloc = self.allocations.get(o)
            if alloc is None or (handle_id and alloc.handle_id != handle_id):
                continue
            del self.allocations[o]
            self.unallocated.append(o)
            freed.append(ip)
        return freed

    def release_handle(self, handle_id: str) -> list[str]:
        return self.release(self.ips_of(handle_id))


# Handles -------------------------------------------------------------------

@dataclasses.dataclass
class Handle:
    handle_id: str
    blocks: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, handle_id: str, data: dict | None) -> "Handle":
        return cls(handle_id, dict((data or {}).get("blocks", {})))

    def to_json(self) -> dict:
        return {"handle_id": self.handle_id, "blocks": dict(sorted(self.blocks.items()))}

    def add(self, block: str, count: int) -> None:
        self.blocks[block] = self.blocks.get(block, 0) + count

    def remove(self, block: str, count: int) -> None:
        left = self.blocks.get(block, 0) - count
        if left > 0:
            self.blocks[block] = left
        else:
            self.blocks.pop(block, None)

    @property
    def empty(self) -> bool:
        return not self.blocks
