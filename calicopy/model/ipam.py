"""IPAM's records: pools, allocation blocks, handles and block affinities.

A pool is a CIDR with its block size and options. A block is a fixed-size
slice of a pool, as a plain value: it knows which of its addresses are
allocated, to which handle and host, and in what order free addresses are
handed out (released addresses go to the back of the queue, so a just-freed
address is the last to be reused). A handle is the owner of allocations, with
the blocks it holds addresses in, so that release-by-handle touches only
those blocks, and what each of its idempotent requests got (a retry of the
request is answered from that record). A host's affinity for a block is
``pending`` while it claims it and ``confirmed`` once the block is its own.
A block without affinity (its host was retired while other hosts still had
addresses in it) is only borrowed from, and goes once empty.

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
from calicopy.model.record import RecordError, decode_all, field

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
        """The record as stored (also one made before IP-in-IP modes existed:
        ``"ipip": true`` is always); RecordError says what is wrong with a
        malformed one."""
        cidr = _network(data, "cidr")
        block_size = field(data, "block_size", int)
        low, high = BLOCK_SIZE_RANGE[cidr.version]
        if not max(low, cidr.prefixlen) <= block_size <= high:
            raise RecordError(f"field 'block_size' holds {block_size}, not a block size of "
                              f"pool {cidr}")
        mode = field(data, "ipip_mode", str, "") or \
            (IPIP_ALWAYS if field(data, "ipip", bool, False) else IPIP_NEVER)
        if mode not in IPIP_MODES:
            raise RecordError(f"field 'ipip_mode' holds {mode!r}, not one of "
                              f"{', '.join(IPIP_MODES)}")
        return cls(cidr, block_size, field(data, "nat_outgoing", bool, False), mode,
                   field(data, "disabled", bool, False))


def _network(data: dict, name: str) -> Network:
    text = field(data, name, str)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        raise RecordError(f"field '{name}' holds {text!r}, not a network in CIDR form") \
            from None


def read_pools(store: Store, version: int | None = None,
               bad: dict[str, str] | None = None) -> list[Pool]:
    """Every pool (of one IP version), sorted; a malformed one is left out
    (and recorded in ``bad``, key -> what is wrong, when given)."""
    pools = decode_all(store.list(keys.pools_prefix(version)), Pool.from_json, bad)
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
        return cls(field(data, "handle", str), field(data, "host", str, ""),
                   dict(field(data, "attrs", dict, {})))


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
        """The record as stored; RecordError says what is wrong with a malformed one
        (including an ordinal outside the block, or both free and allocated)."""
        cidr = _network(data, "cidr")
        field(data, "affinity", str, "")
        unallocated = field(data, "unallocated", list)
        allocations = {}
        for o, a in field(data, "allocations", dict).items():
            if not str(o).isdigit():
                raise RecordError(f"field 'allocations' has the ordinal {o!r}")
            allocations[int(o)] = Allocation.from_json(a)
        size = cidr.num_addresses
        if not all(isinstance(o, int) and 0 <= o < size for o in unallocated) or \
                any(o >= size for o in allocations) or set(unallocated) & set(allocations):
            raise RecordError(f"its ordinals are not those of block {cidr}, each free or "
                              "allocated once")
        return cls(cidr, block_host(data), list(unallocated), allocations)

    def copy(self) -> "Block":
        """A copy to change; the allocations themselves are never changed in
        place (only added and removed), so they are shared."""
        return Block(self.cidr, self.host, list(self.unallocated), dict(self.allocations))

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


def affinity_from_json(data: dict) -> str:
    """A host's affinity record for a block: its state."""
    state = field(data, "state", str)
    if state not in (PENDING, CONFIRMED):
        raise RecordError(f"field 'state' holds {state!r}, not {PENDING} or {CONFIRMED}")
    return state


# Handles -------------------------------------------------------------------

@dataclasses.dataclass
class Request:
    """What one AutoAssign request (by its request id) asked for, and the
    addresses it holds of what it got (released ones leave it)."""

    num_ipv4: int
    num_ipv6: int
    ips: list[str] = dataclasses.field(default_factory=list)

    def wanted(self, version: int) -> int:
        return self.num_ipv4 if version == 4 else self.num_ipv6

    def got(self, version: int) -> list[str]:
        return [ip for ip in self.ips if (":" in ip) == (version == 6)]

    @property
    def complete(self) -> bool:
        return all(len(self.got(v)) >= self.wanted(v) for v in (4, 6))

    def to_json(self) -> dict:
        return {"num_ipv4": self.num_ipv4, "num_ipv6": self.num_ipv6, "ips": self.ips}

    @classmethod
    def from_json(cls, data: dict) -> "Request":
        ips = field(data, "ips", list, [])
        if not all(isinstance(ip, str) for ip in ips):
            raise RecordError(f"field 'ips' holds {ips!r}, not addresses")
        return cls(field(data, "num_ipv4", int, 0), field(data, "num_ipv6", int, 0), list(ips))


@dataclasses.dataclass
class Handle:
    """An owner of allocations: how many it holds in each block, and what
    each of its idempotent requests got (``requests``, by request id)."""

    handle_id: str
    blocks: dict[str, int] = dataclasses.field(default_factory=dict)
    requests: dict[str, Request] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, handle_id: str, data: dict | None) -> "Handle":
        blocks = field(data, "blocks", dict, {}) if data is not None else {}
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in blocks.values()):
            raise RecordError(f"field 'blocks' holds {blocks!r}, not block counts")
        requests = field(data, "requests", dict, {}) if data is not None else {}
        return cls(handle_id, dict(blocks),
                   {rid: Request.from_json(r) for rid, r in requests.items()})

    def to_json(self) -> dict:
        data = {"handle_id": self.handle_id, "blocks": dict(sorted(self.blocks.items()))}
        if self.requests:       # absent otherwise: records from before requests look the same
            data["requests"] = {rid: r.to_json() for rid, r in sorted(self.requests.items())}
        return data

    def add(self, block: str, count: int) -> None:
        self.blocks[block] = self.blocks.get(block, 0) + count

    def remove(self, block: str, count: int) -> None:
        left = self.blocks.get(block, 0) - count
        if left > 0:
            self.blocks[block] = left
        else:
            self.blocks.pop(block, None)

    def record(self, request_id: str, num_ipv4: int, num_ipv6: int, ips: list[str]) -> None:
        """Add ``ips`` to what request ``request_id`` got."""
        request = self.requests.setdefault(request_id, Request(num_ipv4, num_ipv6))
        request.ips += [ip for ip in ips if ip not in request.ips]

    def forget(self, ips: list[str]) -> None:
        """Released addresses leave the requests that got them; a request
        left with nothing is forgotten (a retry of it allocates anew)."""
        gone = set(ips)
        for request_id, request in list(self.requests.items()):
            request.ips = [ip for ip in request.ips if ip not in gone]
            if not request.ips:
                del self.requests[request_id]

    @property
    def empty(self) -> bool:
        return not self.blocks
