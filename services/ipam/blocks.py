"""An allocation block: a fixed-size slice of a pool, as a plain value.

A block knows which of its addresses are allocated, to which handle and host,
and in what order free addresses are handed out: released addresses go to the
back of the queue so that a just-freed address is the last to be reused.
Nothing here touches the datastore; callers read a block, change it with these
methods and write it back with a compare-and-swap.

Invariant: every ordinal 0..size-1 is in exactly one of ``unallocated`` and
``allocations``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter

from services.ipam.errors import InvalidInput


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
        affinity = data.get("affinity") or ""
        return cls(
            ipaddress.ip_network(data["cidr"]),
            affinity.removeprefix("host:") or None,
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
