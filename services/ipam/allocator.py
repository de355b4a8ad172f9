"""Address allocation over etcd: host-affine blocks, borrowing, release, checks.

Every change is a read of the objects involved, a change to their plain-value
form (``Block``, ``Handle``, ``Pool``) and one conditional transaction; a lost
race re-reads and tries again a bounded number of times. An allocation and the
matching handle update commit together, so a crash can never leave an address
without its owner or an owner without its address.

Claiming a block for a host is two-phase, as an interrupted claim must be
recoverable: (1) write the host's affinity for the block as ``pending``; (2)
create the block and mark the affinity ``confirmed`` in one transaction. The
block key is what reserves the addresses; a pending affinity reserves nothing.
When a host next allocates, it finishes any pending claim of its own: creates
the block if it is still free, confirms it if the block is already its own, or
drops the claim if another host took the block in the meantime.

Allocation transactions also require the pool to be unchanged; deleting a pool
first disables it, which makes any in-flight allocation in it fail and re-read,
so the "still in use?" check before deletion cannot be raced.

Speed: a service instance remembers, per host, the blocks it found and the
last version of each block it wrote. The common case (a host allocating in its
own block with room) is then one transaction and no reads. The memory is only
a hint: that transaction still compares the block's and the pool's revisions,
and any failed compare falls back to the full read-decide-commit path.
Allocations for one host are serialised within an instance, since they would
contend for the same block anyway.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import threading
from collections import Counter, defaultdict

from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store, Txn, retry
from calicopy.model.ipam import (CONFIRMED, IPIP_NEVER, PENDING, Block, Handle, InvalidInput,
                                 Pool, check_ipip_mode, parse_cidr, parse_ip, within)
from services.ipam.errors import (AddressTaken, NoPool, OutsidePools, PoolConflict,
                                  PoolExhausted, PoolNotFound)
from services.ipam.pools import PoolRegistry

MAX_PER_REQUEST = 1024
# etcd refuses a transaction of more than 128 operations (by default); a
# block change plus this many handle changes stays well under it.
MAX_HANDLES_PER_TXN = 50

_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?\Z")


def validate_host(host: str) -> str:
    if not host or not _HOST_RE.match(host):
        raise InvalidInput(
            f"Invalid hostname '{host}': use 1-253 letters, digits, '.', '-' or '_'.")
    return host


def validate_handle(handle_id: str) -> str:
    if not handle_id or len(handle_id) > 600 or not handle_id.isprintable() \
            or any(c.isspace() for c in handle_id):
        raise InvalidInput(
            f"Invalid handle id '{handle_id}': it must be 1-600 printable characters "
            "without spaces.")
    return handle_id


def validate_count(name: str, count: int) -> int:
    if not 0 <= count <= MAX_PER_REQUEST:
        raise InvalidInput(f"{name} must be between 0 and {MAX_PER_REQUEST}, not {count}.")
    return count


@dataclasses.dataclass
class Usage:
    pools: list[dict]
    blocks: list[dict]
    hosts: list[dict]


@dataclasses.dataclass
class Problem:
    kind: str
    subject: str
    detail: str


class Ipam:
    """Pools and allocations over the store it is given. The store holds all
    the state; what an instance remembers (blocks it saw, per host) is only a
    hint that every commit re-checks, so any number of instances may serve."""

    def __init__(self, store: Store, max_blocks_per_host: int | None = None):
        self.store = store
        self.pools = PoolRegistry(store)
        self.max_blocks_per_host = max_blocks_per_host
        self._host_blocks_seen: dict[tuple[str, int], list[tuple[keys.Network, KV]]] = {}
        self._blocks_seen: dict[keys.Network, KV] = {}
        self._host_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    # Pools -----------------------------------------------------------------

    def create_pool(self, cidr: str, block_size: int = 0, nat_outgoing=False,
                    ipip_mode=None, disabled=False) -> Pool:
        net, _ = parse_cidr(cidr)
        return self.pools.create(Pool.new(net, block_size, nat_outgoing=nat_outgoing,
                                          ipip_mode=ipip_mode or IPIP_NEVER,
                                          disabled=disabled))

    def update_pool(self, cidr: str, **flags) -> Pool:
        net, _ = parse_cidr(cidr)
        if flags.get("ipip_mode") is not None:
            check_ipip_mode(flags["ipip_mode"], net.version)
        return self.pools.update(net, **flags)[0]

    def list_pools(self, version: int | None = None) -> list[Pool]:
        return [p for p, _ in self.pools.list(version)]

    def delete_pool(self, cidr: str, force: bool = False) -> int:
        """Delete a pool; returns how many allocations were dropped with it."""
        net, _ = parse_cidr(cidr)
        pool, _ = self.pools.require(net)
        was_disabled = pool.disabled
        # Disabling first fences off allocations (they compare the pool's
        # revision), so the usage count below cannot be raced.
        self.pools.update(net, disabled=True)
        block_kvs = self._pool_blocks(pool)
        allocated = sum(Block.from_json(kv.json()).used for kv in block_kvs)
        if allocated and not force:
            self.pools.update(net, disabled=was_disabled)
            raise PoolConflict(
                f"Pool {net} still has {allocated} allocated address(es); release them "
                "first, or force the removal to drop them.")
        for kv in block_kvs:
            self._drop_block(kv.key)
        for kv in self.store.list(keys.AFFINITIES):
            if within(keys.parse_affinity(kv.key)[1], net):
                self.store.commit(Txn().delete(kv))

        def attempt():
            found = self.pools.get(net)
            return True if found is None else (self.pools.delete(found[1]) or None)
        retry(f"deleting pool {net}", attempt)
        return allocated

    def _pool_blocks(self, pool: Pool) -> list[KV]:
        return [kv for kv in self.store.list(keys.blocks_prefix(pool.version))
                if within(keys.parse_block(kv.key), pool.cidr)]

    def _drop_block(self, block_key: str) -> None:
        """Delete a block with the handle references to it. A block with more
        owners than one transaction may touch is detached from them in rounds,
        the last of which deletes it."""
        def attempt():
            kv = self.store.get(block_key)
            if kv is None:
                return True
            block = Block.from_json(kv.json())
            cidr = str(block.cidr)
            linked = Counter()
            for handle_id, n in block.handle_counts().items():
                handle_kv = self.store.get(keys.handle(handle_id))
                if handle_kv and cidr in handle_kv.json().get("blocks", {}):
                    linked[handle_id] = n
                if len(linked) > MAX_HANDLES_PER_TXN:
                    break
            last = len(linked) <= MAX_HANDLES_PER_TXN
            chunk = Counter(dict(list(linked.items())[:MAX_HANDLES_PER_TXN]))
            txn = Txn().delete(kv) if last else Txn().require_unchanged(kv)
            self._handle_changes(txn, block, chunk, sign=-1)
            if not self.store.commit(txn):
                return None
            return True if last else False
        while not retry(f"deleting block {block_key}", attempt):
            pass

    # Allocation ------------------------------------------------------------

    def auto_assign(self, num_ipv4: int, num_ipv6: int, handle_id: str, host: str,
                    attributes: dict[str, str] | None = None,
                    ipv4_pools: list[str] = (), ipv6_pools: list[str] = ()
                    ) -> tuple[list[str], list[str]]:
        validate_count("num_ipv4", num_ipv4)
        validate_count("num_ipv6", num_ipv6)
        validate_handle(handle_id)
        validate_host(host)
        if not num_ipv4 and not num_ipv6:
            raise InvalidInput("Nothing to assign: num_ipv4 and num_ipv6 are both 0.")
        attributes = dict(attributes or {})
        wanted = [(4, num_ipv4, ipv4_pools), (6, num_ipv6, ipv6_pools)]
        got: dict[int, list[str]] = {4: [], 6: []}
        with self._host_locks[host]:
            try:
                for version, count, requested in wanted:
                    if not count:
                        continue
                    fast = None if requested else self._assign_from_memory(
                        version, count, handle_id, host, attributes)
                    got[version] = fast or self._assign_family(
                        version, count, handle_id, host, attributes,
                        self._candidate_pools(version, requested))
            except BaseException:
                self.release_ips(got[4] + got[6], handle_id)
                raise
        return got[4], got[6]

    def _assign_from_memory(self, version, count, handle_id, host, attrs) -> list[str] | None:
        """One optimistic transaction against the host's remembered block, or None."""
        for net, pool_kv in self._host_blocks_seen.get((host, version), ()):
            kv = self._blocks_seen.get(net)
            if kv is None:
                continue
            block = Block.from_json(kv.json())
            if block.free < count:
                continue
            ips = block.allocate(count, handle_id, host, attrs)
            txn = Txn().update(kv, block.to_json()).require_unchanged(pool_kv)
            txn.create(keys.handle(handle_id), Handle(handle_id, {str(net): count}).to_json())
            revision = self.store.commit(txn)
            if not revision:
                self._blocks_seen.pop(net, None)
                return None
            self._blocks_seen[net] = KV(kv.key, txn.puts[kv.key], revision)
            return ips
        return None

    def _candidate_pools(self, version: int, requested) -> list[tuple[Pool, KV]]:
        pools = self.pools.list(version)
        if requested:
            by_cidr = {p.cidr: (p, kv) for p, kv in pools}
            chosen = []
            for text in requested:
                net, _ = parse_cidr(text)
                if net.version != version:
                    raise InvalidInput(f"{net} is not an IPv{version} pool.")
                if net not in by_cidr:
                    raise PoolNotFound(net)
                if by_cidr[net][0].disabled:
                    raise NoPool(f"Pool {net} is disabled.")
                chosen.append(by_cidr[net])
            return chosen
        enabled = [(p, kv) for p, kv in pools if not p.disabled]
        if not enabled:
            raise NoPool(f"No enabled IPv{version} pool is configured; add one with "
                         "'calicoctl pool add <CIDR>'.")
        return enabled

    def _assign_family(self, version, count, handle_id, host, attrs, pools) -> list[str]:
        got: list[str] = []

        def take(block_net, pool_kv):
            got.extend(self._allocate_in_block(block_net, count - len(got), handle_id,
                                               host, attrs, pool_kv))
            return len(got) >= count

        try:
            # 1. Blocks this host already has.
            own = self._host_blocks(host, version, pools)
            for block_net, pool_kv in own:
                if take(block_net, pool_kv):
                    return got
            # 2. New blocks for this host.
            claimed = len(own)
            while self.max_blocks_per_host is None or claimed < self.max_blocks_per_host:
                new = self._claim_block(host, pools)
                if new is None:
                    break
                claimed += 1
                if take(*new):
                    return got
            # 3. Borrow from other hosts' blocks.
            for kv in self.store.list(keys.blocks_prefix(version)):
                block = Block.from_json(kv.json())
                pool_kv = _pool_kv_of(block.cidr, pools)
                if pool_kv is None or block.host == host or not block.free:
                    continue
                if take(block.cidr, pool_kv):
                    return got
        except BaseException:
            self.release_ips(got, handle_id)
            raise
        self.release_ips(got, handle_id)
        names = ", ".join(str(p.cidr) for p, _ in pools)
        raise PoolExhausted(
            f"Not enough free IPv{version} addresses: wanted {count}, found {len(got)} "
            f"in {names}. Add a pool or release addresses.")

    def _host_blocks(self, host, version, pools) -> list[tuple[keys.Network, KV]]:
        """The host's blocks in the candidate pools. An affinity is checked
        against its block: a claim interrupted between its two phases is
        finished, and an affinity whose block is gone or another host's (left
        by a crash during a forced pool removal) is repaired or dropped."""
        found = []
        for kv in self.store.list(keys.host_affinities_prefix(host, version)):
            _, net = keys.parse_affinity(kv.key)
            pool_kv = _pool_kv_of(net, pools)
            if pool_kv is None:
                continue
            block_kv = self.store.get(keys.block(net))
            intact = (kv.json()["state"] == CONFIRMED and block_kv is not None
                      and Block.from_json(block_kv.json()).host == host)
            if intact or self._finish_claim(host, net, kv, pool_kv):
                found.append((net, pool_kv))
        found.sort(key=lambda f: f[0])
        self._host_blocks_seen[(host, version)] = list(found)
        return found

    def _finish_claim(self, host, net, aff_kv: KV, pool_kv: KV) -> bool:
        """Complete (or abandon) a pending claim; say whether the host now has the block."""
        block_kv = self.store.get(keys.block(net))
        confirmed = {"state": CONFIRMED}
        if block_kv is None:
            txn = Txn().create(keys.block(net), Block.empty(net, host).to_json())
            txn.update(aff_kv, confirmed).require_unchanged(pool_kv)
            return self.store.commit(txn)
        if Block.from_json(block_kv.json()).host == host:
            return self.store.commit(Txn().update(aff_kv, confirmed))
        self.store.commit(Txn().delete(aff_kv))
        return False

    def _claim_block(self, host, pools) -> tuple[keys.Network, KV] | None:
        for pool, pool_kv in pools:
            taken = {keys.parse_block(kv.key) for kv in self._pool_blocks(pool)}
            if len(taken) >= pool.num_blocks:
                continue
            for net in pool.blocks_from(host):
                if net in taken:
                    continue
                block_key, aff_key = keys.block(net), keys.affinity(host, net)
                # Phase 1: record the intent.
                if not self.store.commit(Txn().create(aff_key, {"state": PENDING})
                                         .require_absent(block_key)):
                    taken.add(net)
                    continue
                # Phase 2: create the block and confirm, atomically.
                aff_kv = self.store.get(aff_key)
                txn = Txn().create(block_key, Block.empty(net, host).to_json())
                txn.update(aff_kv, {"state": CONFIRMED}).require_unchanged(pool_kv)
                if self.store.commit(txn):
                    self._host_blocks_seen.setdefault((host, net.version), []).append(
                        (net, pool_kv))
                    return net, pool_kv
                # Another host created the block first, or the pool changed.
                self.store.commit(Txn().delete(aff_kv))
                taken.add(net)
                current = self.pools.get(pool.cidr)
                if current is None or current[0].disabled:
                    break
                pool_kv = current[1]
        return None

    def _allocate_in_block(self, net, count, handle_id, host, attrs, pool_kv) -> list[str]:
        state = {"pool_kv": pool_kv}

        def attempt():
            kv = self.store.get(keys.block(net))
            if kv is None:
                return []
            block = Block.from_json(kv.json())
            ips = block.allocate(count, handle_id, host, attrs)
            if not ips:
                return []
            txn = Txn().update(kv, block.to_json()).require_unchanged(state["pool_kv"])
            self._handle_changes(txn, block, Counter({handle_id: len(ips)}), sign=+1)
            revision = self.store.commit(txn)
            if revision:
                self._blocks_seen[net] = KV(kv.key, txn.puts[kv.key], revision)
                return ips
            current = self.store.get(state["pool_kv"].key)
            if current is None or Pool.from_json(current.json()).disabled:
                return []
            state["pool_kv"] = current
            return None
        return retry(f"allocating in block {net}", attempt)

    def _handle_changes(self, txn: Txn, block: Block, counts: Counter, sign: int) -> None:
        """Add to ``txn`` the handle updates for ``counts`` addresses per handle
        gained (+1) or lost (-1) in ``block``."""
        for handle_id, n in counts.items():
            key = keys.handle(handle_id)
            kv = self.store.get(key)
            handle = Handle.from_json(handle_id, kv.json() if kv else None)
            if sign > 0:
                handle.add(str(block.cidr), n)
            else:
                handle.remove(str(block.cidr), n)
            if handle.empty:
                if kv:
                    txn.delete(kv)
                else:
                    txn.require_absent(key)
            else:
                txn.put(key, kv, handle.to_json())

    def assign_ip(self, ip: str, handle_id: str, host: str,
                  attributes: dict[str, str] | None = None) -> Pool:
        addr = parse_ip(ip)
        validate_handle(handle_id)
        validate_host(host)
        found = self.pools.containing(addr)
        if found is None:
            raise OutsidePools(addr)
        pool, pool_kv = found
        if pool.disabled:
            raise NoPool(f"Pool {pool.cidr} is disabled.")
        net = pool.block_of(addr)
        if self.store.get(keys.block(net)) is None:
            # Claim the block for this host; if someone beats us to it we
            # simply borrow the address from their block below.
            self._claim_specific(host, net, pool_kv)
        attrs = dict(attributes or {})
        state = {"pool_kv": pool_kv}

        def attempt():
            kv = self.store.get(keys.block(net))
            if kv is None:
                # Our claim lost, and so did the other side's: claim again.
                self._claim_specific(host, net, state["pool_kv"])
                return None
            block = Block.from_json(kv.json())
            if not block.assign(str(addr), handle_id, host, attrs):
                raise AddressTaken(addr, pool.cidr)
            txn = Txn().update(kv, block.to_json()).require_unchanged(state["pool_kv"])
            self._handle_changes(txn, block, Counter({handle_id: 1}), sign=+1)
            if self.store.commit(txn):
                return pool
            current = self.pools.get(pool.cidr)     # the pool may have changed
            if current is None or current[0].disabled:
                raise NoPool(f"Pool {pool.cidr} was disabled or removed meanwhile.")
            state["pool_kv"] = current[1]
            return None
        return retry(f"assigning {addr}", attempt)

    def _claim_specific(self, host, net, pool_kv) -> None:
        aff_key = keys.affinity(host, net)
        self.store.commit(Txn().create(aff_key, {"state": PENDING}))
        aff_kv = self.store.get(aff_key)
        if aff_kv is not None and aff_kv.json()["state"] == PENDING:
            self._finish_claim(host, net, aff_kv, pool_kv)

    # Release ---------------------------------------------------------------

    def release_ips(self, ips: list[str], handle_id: str | None = None
                    ) -> tuple[list[str], list[str]]:
        """Free addresses; returns (released, not_assigned)."""
        if handle_id:
            validate_handle(handle_id)
        addrs = [parse_ip(ip) for ip in ips]
        by_block: dict[keys.Network, list[str]] = defaultdict(list)
        not_assigned: list[str] = []
        pools = self.pools.list()
        for addr in addrs:
            pool = next((p for p, _ in pools if addr in p.cidr), None)
            if pool is None:
                not_assigned.append(str(addr))
            else:
                by_block[pool.block_of(addr)].append(str(addr))
        released: list[str] = []
        for net, wanted in sorted(by_block.items(), key=lambda item: _order(item[0])):
            freed = self._release_in_block(net, lambda b: b.release(wanted, handle_id))
            released += freed
            not_assigned += [ip for ip in wanted if ip not in freed]
        return released, not_assigned

    def release_by_handle(self, handle_id: str) -> list[str]:
        validate_handle(handle_id)
        kv = self.store.get(keys.handle(handle_id))
        if kv is None:
            return []
        released = []
        for cidr in Handle.from_json(handle_id, kv.json()).blocks:
            net = ipaddress.ip_network(cidr)
            released += self._release_in_block(net, lambda b: b.release_handle(handle_id))
        return released

    def _release_in_block(self, net, change) -> list[str]:
        """Free what ``change(block)`` frees, committing the block and its
        owners' handles together; when more owners are involved than one
        transaction may touch, in several rounds."""
        def attempt():
            kv = self.store.get(keys.block(net))
            if kv is None:
                return [], False
            block = Block.from_json(kv.json())
            before = {o: a.handle_id for o, a in block.allocations.items()}
            freed = change(block)
            if not freed:
                return [], False
            lost = Counter(before[block.ordinal(ip)] for ip in freed)
            more = len(lost) > MAX_HANDLES_PER_TXN
            if more:
                keep = set(list(lost)[:MAX_HANDLES_PER_TXN])
                block = Block.from_json(kv.json())
                freed = block.release([ip for ip in freed if before[block.ordinal(ip)] in keep])
                lost = Counter({h: n for h, n in lost.items() if h in keep})
            txn = Txn().update(kv, block.to_json())
            self._handle_changes(txn, block, lost, sign=-1)
            revision = self.store.commit(txn)
            if not revision:
                return None
            self._blocks_seen[net] = KV(kv.key, txn.puts[kv.key], revision)
            return freed, more
        released = []
        while True:
            freed, more = retry(f"releasing in block {net}", attempt)
            released += freed
            if not more:
                return released

    # Reports ---------------------------------------------------------------

    def get_allocation(self, ip: str) -> dict:
        addr = parse_ip(ip)
        found = self.pools.containing(addr)
        if found is None:
            raise OutsidePools(addr)
        pool = found[0]
        net = pool.block_of(addr)
        result = {"pool": str(pool.cidr), "block": "", "block_host": "",
                  "allocated": False, "handle_id": "", "host": "", "attributes": {}}
        kv = self.store.get(keys.block(net))
        if kv is None:
            return result
        block = Block.from_json(kv.json())
        result.update(block=str(net), block_host=block.host or "")
        owner = block.owner(str(addr))
        if owner:
            result.update(allocated=True, handle_id=owner.handle_id, host=owner.host,
                          attributes=owner.attributes)
        return result

    def handle_allocations(self, handle_id: str) -> list[dict]:
        validate_handle(handle_id)
        kv = self.store.get(keys.handle(handle_id))
        if kv is None:
            return []
        found = []
        for cidr in Handle.from_json(handle_id, kv.json()).blocks:
            block_kv = self.store.get(keys.block(ipaddress.ip_network(cidr)))
            if block_kv is None:
                continue
            block = Block.from_json(block_kv.json())
            for o, alloc in sorted(block.allocations.items()):
                if alloc.handle_id == handle_id:
                    found.append({"ip": block.ip(o), "host": alloc.host,
                                  "attributes": alloc.attributes})
        return found

    def usage(self, version: int | None = None) -> Usage:
        pools = self.pools.list(version)
        blocks = [Block.from_json(kv.json())
                  for kv in self.store.list(keys.blocks_prefix(version))]
        pool_rows, block_rows = [], []
        hosts: dict[str, dict] = defaultdict(lambda: {"blocks": 0, "allocated": 0})
        for pool, _ in pools:
            mine = sorted((b for b in blocks if within(b.cidr, pool.cidr)),
                          key=lambda b: b.cidr)
            pool_rows.append({"cidr": str(pool.cidr), "size": pool.cidr.num_addresses,
                              "allocated": sum(b.used for b in mine), "blocks": len(mine)})
            for b in mine:
                block_rows.append({"cidr": str(b.cidr), "pool": str(pool.cidr),
                                   "host": b.host or "", "size": b.size, "allocated": b.used})
        for b in blocks:
            if b.host:
                hosts[b.host]["blocks"] += 1
            for a in b.allocations.values():
                hosts[a.host]["allocated"] += 1
        host_rows = [{"host": h, **v} for h, v in sorted(hosts.items())]
        return Usage(pool_rows, block_rows, host_rows)

    def check(self) -> tuple[list[Problem], int, int]:
        """Cross-check blocks, affinities and handles."""
        problems: list[Problem] = []
        pools = self.list_pools()
        blocks = {keys.parse_block(kv.key): Block.from_json(kv.json())
                  for kv in self.store.list(keys.blocks_prefix())}
        handles = {keys.parse_handle(kv.key): Handle.from_json(keys.parse_handle(kv.key),
                                                               kv.json())
                   for kv in self.store.list(keys.HANDLES)}
        affinities = {keys.parse_affinity(kv.key): kv.json()["state"]
                      for kv in self.store.list(keys.AFFINITIES)}

        for net, block in sorted(blocks.items(), key=lambda item: _order(item[0])):
            if not any(within(net, p.cidr) for p in pools):
                problems.append(Problem("block-outside-pools", str(net),
                                        f"Block {net} lies in no configured pool."))
            if block.host and affinities.get((block.host, net)) != CONFIRMED:
                problems.append(Problem(
                    "broken-affinity", str(net),
                    f"Block {net} is affine to host {block.host}, which holds no "
                    "confirmed affinity for it."))
            counts = block.handle_counts()
            for o, alloc in sorted(block.allocations.items()):
                handle = handles.get(alloc.handle_id)
                if handle is None or handle.blocks.get(str(net), 0) < counts[alloc.handle_id]:
                    problems.append(Problem(
                        "address-without-handle", block.ip(o),
                        f"{block.ip(o)} is allocated to handle {alloc.handle_id}, which "
                        f"does not record it; release it with 'calicoctl ipam release "
                        f"--ip={block.ip(o)}'."))
        for (host, net), state in sorted(affinities.items(),
                                          key=lambda i: (i[0][0], _order(i[0][1]))):
            block = blocks.get(net)
            if block is None or block.host != host:
                problems.append(Problem(
                    "broken-affinity", str(net),
                    f"Host {host} has a {state} affinity for block {net}, which "
                    f"{'does not exist' if block is None else 'belongs to another host'}; "
                    "the host's next allocation repairs it."))
        for handle_id, handle in sorted(handles.items()):
            for cidr, n in sorted(handle.blocks.items()):
                block = blocks.get(ipaddress.ip_network(cidr))
                have = block.handle_counts()[handle_id] if block else 0
                if have < n:
                    problems.append(Problem(
                        "handle-without-address", handle_id,
                        f"Handle {handle_id} records {n} address(es) in block {cidr} "
                        f"but the block holds {have} for it."))
        return problems, len(blocks), len(handles)


def _pool_kv_of(net, pools) -> KV | None:
    for pool, kv in pools:
        if within(net, pool.cidr):
            return kv
    return None


def _order(net):
    """Sort key for networks of mixed IP versions."""
    return net.version, net
