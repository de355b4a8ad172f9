"""The workloads' default MTU on this node (when an add gives none).

The rule: the MTU set for the node (``calicoctl node --mtu``), else, while an
IPv4 pool uses IP-in-IP, the underlay's MTU (of the interface holding the
node's IPv4 address) minus the 20 bytes of the outer header, so a workload's
full-sized packet still fits the underlay once encapsulated; else 0 (the
kernel's default, 1500, as before). The MTU is the interface's, for IPv4 and
IPv6 alike. Read at each add, so a pool switched to IP-in-IP applies to the
workloads added from then on (existing ones keep theirs).
"""

from __future__ import annotations

from typing import Callable

from calicopy import underlay
from calicopy.datastore import keys
from calicopy.datastore.store import Store
from calicopy.model import ipam

IPIP_OVERHEAD = 20


class DefaultMtu:
    def __init__(self, store: Store, node: str, configured: int = 0,
                 mtu_of: Callable[[str], int] = underlay.mtu_of):
        self.store, self.node, self.configured, self.mtu_of = store, node, configured, mtu_of

    def __call__(self) -> int:
        if self.configured:
            return self.configured
        if not any(p.version == 4 and p.ipip for p in ipam.read_pools(self.store, 4)):
            return 0
        kv = self.store.get(keys.node(self.node))
        ipv4 = (kv.json().get("ipv4") if kv else "") or ""
        return self.mtu_of(ipv4) - IPIP_OVERHEAD
