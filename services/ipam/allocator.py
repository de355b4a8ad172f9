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
drops the claim if another host took the block in the meantime. Claims of one
host made at the same moment (two replicas serving it) end in one block: a
claim first takes over any affinity of its host it has not tried yet, and one
whose first phase finds its host's affinity there already finishes that claim
instead of starting another. A claim whose second phase fails deletes only
its own pending affinity (compared by the revision it wrote), never a
confirmed one or another claim's.

Idempotent requests: an AutoAssign with a request id records, in the handle
and in the transaction that allocates, what the request got. Every
allocation attempt re-reads the handle and allocates only what the record
still lacks, and the handle's revision is compared at commit, so two
attempts of one request (a client that failed over while the first still
runs) never both allocate; the answer is the record. A failed attempt takes
back its own addresses only while the record is incomplete: once complete,
another attempt may have answered with them.

Deadlines: an allocation is given the time by which it must have started its
last commit (the caller's deadline, less a margin) and gives up before any
claim or allocation commit after it, so that nothing lands after the caller
gave up and cleaned up. Releases, its own rollback included, are never cut
short.

Allocation transactions also require the pool to be unchanged; deleting a pool
first disables it, which makes any in-flight allocation in it fail and re-read,
so the "still in use?" check before deletion cannot be raced.

Speed: a service instance remembers, per host, the blocks it found and the
last version of each block it wrote (parsed, so it need not be read or
decoded again). The common case (a host allocating in its own block with
room) is then one transaction and no reads. The memory is only a hint: that
transaction still compares the block's and the pool's revisions, and any
failed compare falls back to the full read-decide-commit path.

Group commit: an instance has one common-case commit in flight at a time;
the allocations (of any host) that arrive meanwhile wait together and are
then committed in one transaction by whichever of them goes next: a burst of
adds costs a few transactions, not one each, and etcd's transaction rate is
no longer the limit. A batch is all or nothing: should its commit fail, each
of its calls takes the full path on its own. Each call in a batch keeps its
own deadline (one that has passed is left out before the commit) and its own
handle (two calls of one handle never share a batch); a batch writes blocks
of at most MAX_BATCH_ADDRESSES addresses together (beyond its first), the
others go on their own. The full path (reads, claims, borrowing) is taken by
one call of a host at a time within an instance (the host's "lane"), since
such calls would contend for the same blocks anyway.

Who owns an allocation (for the release guard, the check and the garbage
collector) is ``services.ipam.owners``'s business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
import threading
import time
from collections import defaultdict
from typing import Callable

from calicopy import failpoints
from calicopy.datastore import keys
from calicopy.datastore.store import DEFAULT_ATTEMPTS, KV, ContentionError, Store, Txn, retry
from calicopy.model.ipam import (CONFIRMED, IPIP_NEVER, PENDING, Block, Handle, InvalidInput,
                                 Pool, Request, block_host, check_ipip_mode, parse_cidr,
                                 parse_ip, within)
from services.ipam import checks, owners
from services.ipam.errors import (AddressInUse, AddressTaken, GaveUp, NoPool, OutsidePools,
                                  PoolConflict, PoolExhausted, PoolNotFound, RequestConflict)
from services.ipam.pools import PoolRegistry

MAX_PER_REQUEST = 1024
# etcd refuses a transaction of more than 128 operations (by default); a
# block change plus this many handle changes stays well under it.
MAX_HANDLES_PER_TXN = 50
# How many calls one group commit takes at most: each adds a handle (a compare
# and a put) to the transaction.
MAX_BATCH = MAX_HANDLES_PER_TXN
# How many addresses the blocks one group commit writes may hold together
# (beyond its first block's): a block's record grows with its allocations, and
# etcd refuses a request of more than 1.5 MiB (by default).
MAX_BATCH_ADDRESSES = 1024
# How many endpoints a refusal names before "and N more".
NAMED_USERS = 5

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


def validate_request_id(request_id: str) -> str:
    if request_id and (len(request_id) > 128 or not request_id.isprintable()
                       or any(c.isspace() for c in request_id)):
        raise InvalidInput(
            f"Invalid request id '{request_id}': it must be up to 128 printable characters "
            "without spaces.")
    return request_id


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
class HostRelease:
    """What retiring a host did."""

    released: list[str]
    blocks_freed: list[str]
    blocks_unaffined: list[str]


@dataclasses.dataclass
class _Call:
    """One allocation call: what it wants and has got, its deadline, and (with
    a request id) the handle's record of the request as last read or written."""

    handle_id: str
    host: str
    attrs: dict[str, str]
    want: dict[int, int]
    request_id: str = ""
    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic
    got: dict[int, list[str]] = dataclasses.field(default_factory=lambda: {4: [], 6: []})
    record: Request | None = None
    observed: bool = False

    def check_deadline(self) -> None:
        if self.deadline is not None and self.clock() >= self.deadline:
            raise GaveUp(self.handle_id)

    def observe(self, handle: Handle) -> None:
        """Take note of the handle's record of this request (a copy)."""
        if not self.request_id:
            return
        found = handle.requests.get(self.request_id)
        if found is not None and (found.num_ipv4, found.num_ipv6) != (self.want[4],
                                                                      self.want[6]):
            raise RequestConflict(self.request_id, self.handle_id, found, self.want[4],
                                  self.want[6])
        self.record = None if found is None else Request(found.num_ipv4, found.num_ipv6,
                                                         list(found.ips))
        self.observed = True

    def missing(self, version: int) -> int:
        if self.request_id:
            have = len(self.record.got(version)) if self.record else 0
        else:
            have = len(self.got[version])
        return self.want[version] - have

    @property
    def complete(self) -> bool:
        return all(self.missing(v) <= 0 for v in (4, 6))

    def result(self) -> tuple[list[str], list[str]]:
        if self.request_id:
            return self.record.got(4), self.record.got(6)
        return self.got[4], self.got[6]

    def add_to(self, handle: Handle, block: str, ips: list[str]) -> None:
        handle.add(block, len(ips))
        if self.request_id:
            handle.record(self.request_id, self.want[4], self.want[6], ips)


@dataclasses.dataclass(eq=False)
class _Ticket:
    """A call's wish to allocate what it lacks of ``version`` in its host's
    remembered blocks, in the next group commit. Once ``done``: ``ips`` is
    what it got, None if it must take the full path; ``error`` what stopped it."""

    call: _Call
    version: int
    done: bool = False
    ips: list[str] | None = None
    error: BaseException | None = None


class _Lane:
    """One holder at a time (``busy``): a host's full path, or the instance's
    group commits, whose tickets queue meanwhile (``pending``) and are taken
    by the next holder."""

    def __init__(self):
        self.cond = threading.Condition()
        self.busy = False
        self.pending: list[_Ticket] = []

    def _take(self) -> None:
        while self.busy:
            self.cond.wait()
        self.busy = True

    def _give_back(self) -> None:
        with self.cond:
            self.busy = False
            self.cond.notify_all()

    @contextlib.contextmanager
    def held(self):
        with self.cond:
            self._take()
        try:
            yield
        finally:
            self._give_back()

    def serve(self, ticket: _Ticket, commit: Callable[[list[_Ticket]], None]) -> _Ticket:
        """Queue ``ticket``; whoever holds the lane next commits every queued
        ticket together (``commit``), this thread if none does first."""
        with self.cond:
            self.pending.append(ticket)
        while True:
            with self.cond:
                while self.busy and not ticket.done:
                    self.cond.wait()
                if ticket.done:
                    return ticket
                self.busy = True
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            try:
                commit(batch)
            except BaseException as exc:     # e.g. etcd out of reach: every one's error
                for t in batch:
                    if t.ips is None and t.error is None:
                        t.error = exc
            finally:
                for t in batch:
                    t.done = True
                self._give_back()


class Ipam:
    """Pools and allocations over the store it is given. The store holds all
    the state; what an instance remembers (blocks it saw, per host) is only a
    hint that every commit re-checks, so any number of instances may serve.
    ``clock`` is what deadlines are measured by (time.monotonic)."""

    def __init__(self, store: Store, max_blocks_per_host: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.pools = PoolRegistry(store)
        self.max_blocks_per_host = max_blocks_per_host
        self.clock = clock
        self._host_blocks_seen: dict[tuple[str, int], list[tuple[keys.Network, KV]]] = {}
        self._blocks_seen: dict[keys.Network, KV] = {}
        # The block as last committed here, parsed: (its revision, the Block).
        self._blocks_parsed: dict[keys.Network, tuple[int, Block]] = {}
        self._lanes: dict[str, _Lane] = defaultdict(_Lane)     # per host: the full path
        self._fast_lane = _Lane()       # the common case, any host: group commits

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
            users = self.endpoints_using(str(net))
            named = f", in use by {_name_users(users)}" if users else ""
            raise PoolConflict(
                f"Pool {net} still has {allocated} allocated address(es){named}; release "
                "them first, or force the removal to drop them.")
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

    def endpoints_using(self, cidr: str) -> list[owners.EndpointUse]:
        """The active endpoints that list addresses of ``cidr``, with those addresses."""
        net, _ = parse_cidr(cidr)
        found = []
        for ep in owners.View.read(self.store).active():
            ips = [ip for ip in ep.ips if owners.parses_into(ip, net)]
            if ips:
                found.append(owners.EndpointUse.of(ep, ips))
        return sorted(found, key=lambda u: (u.node, u.orchestrator, u.workload_id))

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
            linked = {}
            for handle_id in block.handle_counts():
                handle_kv = self.store.get(keys.handle(handle_id))
                if handle_kv and cidr in handle_kv.json().get("blocks", {}):
                    linked[handle_id] = block.ips_of(handle_id)
                if len(linked) > MAX_HANDLES_PER_TXN:
                    break
            last = len(linked) <= MAX_HANDLES_PER_TXN
            chunk = dict(list(linked.items())[:MAX_HANDLES_PER_TXN])
            txn = Txn().delete(kv) if last else Txn().require_unchanged(kv)
            self._handle_changes(txn, block, chunk, sign=-1)
            if not self.store.commit(txn):
                return None
            return True if last else False
        while not retry(f"deleting block {block_key}", attempt):
            pass
        self._blocks_seen.pop(keys.parse_block(block_key), None)

    # Allocation ------------------------------------------------------------

    def auto_assign(self, num_ipv4: int, num_ipv6: int, handle_id: str, host: str,
                    attributes: dict[str, str] | None = None,
                    ipv4_pools: list[str] = (), ipv6_pools: list[str] = (),
                    request_id: str = "", deadline: float | None = None
                    ) -> tuple[list[str], list[str]]:
        """Allocate addresses for ``host`` under ``handle_id``; see the module
        docstring for ``request_id`` and ``deadline`` (a ``clock`` time)."""
        validate_count("num_ipv4", num_ipv4)
        validate_count("num_ipv6", num_ipv6)
        validate_handle(handle_id)
        validate_host(host)
        validate_request_id(request_id)
        if not num_ipv4 and not num_ipv6:
            raise InvalidInput("Nothing to assign: num_ipv4 and num_ipv6 are both 0.")
        call = _Call(handle_id, host, dict(attributes or {}), {4: num_ipv4, 6: num_ipv6},
                     request_id, deadline, self.clock)
        requested = {4: ipv4_pools, 6: ipv6_pools}
        lane = self._lanes[host]
        try:
            for _ in range(DEFAULT_ATTEMPTS):
                for version in (4, 6):
                    if call.missing(version) <= 0:
                        continue
                    # The fast path creates the handle: only for a call's first commit.
                    fast = not (requested[version] or call.observed or any(call.got.values()))
                    if fast and self._assign_from_memory(version, call) is not None:
                        continue
                    with lane.held():
                        # A call ahead of this one may have claimed a block meanwhile. (In
                        # a group commit again: a commit of its own could race one.)
                        if fast and self._assign_from_memory(version, call) is not None:
                            continue
                        self._assign_family(version, call, self._candidate_pools(
                            version, requested[version]))
                if call.complete:
                    return call.result()
                # (request id) A failed attempt of the same request took part of
                # it back meanwhile: allocate what the record lacks again.
            raise ContentionError(f"completing request {request_id} of handle {handle_id}",
                                  DEFAULT_ATTEMPTS)
        except BaseException:
            self._roll_back(call)
            raise

    def _assign_from_memory(self, version, call: _Call) -> list[str] | None:
        """What ``call`` lacks of ``version``, from the host's remembered
        blocks in a group commit; None if it must take the full path."""
        ticket = self._fast_lane.serve(_Ticket(call, version), self._commit_tickets)
        if ticket.error is not None:
            raise ticket.error
        return ticket.ips

    def _remembered_block(self, net) -> tuple[KV, Block] | None:
        """The block as this instance last saw it, parsed once per revision:
        not to be changed (copy it first)."""
        kv = self._blocks_seen.get(net)
        if kv is None:
            return None
        parsed = self._blocks_parsed.get(net)
        if parsed is None or parsed[0] != kv.mod_revision:
            parsed = self._blocks_parsed[net] = (kv.mod_revision, Block.from_json(kv.json()))
        return kv, parsed[1]

    def _commit_tickets(self, batch: list[_Ticket]) -> bool:
        """One optimistic transaction for the tickets against their hosts'
        remembered blocks, each ticket's handle created in it. A ticket that
        got addresses has them in ``ips``; one whose deadline passed, its
        ``error``; the others (no room, a handle twice, the transaction too
        big or lost) neither. Says whether any got addresses."""
        # Per block: as remembered, our copy once one of the batch takes from it, the pool.
        working: dict[keys.Network, list] = {}
        placed, handles, used, addresses = [], set(), set(), 0
        txn = Txn()
        for ticket in batch:
            call = ticket.call
            if call.handle_id in handles:
                continue
            try:
                call.check_deadline()
            except GaveUp as exc:
                ticket.error = exc
                continue
            count = call.missing(ticket.version)
            for net, pool_kv in self._host_blocks_seen.get((call.host, ticket.version), ()):
                if net not in working:
                    seen = self._remembered_block(net)
                    if seen is None:
                        continue
                    working[net] = [seen[0], seen[1], None, pool_kv]
                if net not in used and used and \
                        addresses + net.num_addresses > MAX_BATCH_ADDRESSES:
                    break       # the transaction would be too big: on its own, next
                entry = working[net]
                if (entry[1] if entry[2] is None else entry[2]).free < count:
                    continue
                if entry[2] is None:
                    entry[2] = entry[1].copy()
                block = entry[2]
                ips = block.allocate(count, call.handle_id, call.host, call.attrs)
                handle = Handle(call.handle_id)
                call.add_to(handle, str(net), ips)
                txn.create(keys.handle(call.handle_id), handle.to_json())
                handles.add(call.handle_id)
                placed.append((ticket, net, ips, handle))
                if net not in used:
                    used.add(net)
                    addresses += net.num_addresses
                break
        if not placed:
            return False
        pools = {}
        for net in used:
            kv, _, block, pool_kv = working[net]
            txn.update(kv, block.to_json())
            pools[(pool_kv.key, pool_kv.mod_revision)] = pool_kv
        for pool_kv in pools.values():
            txn.require_unchanged(pool_kv)
        failpoints.reached("ipam-assign-before-commit")
        revision = self.store.commit(txn)
        if not revision:
            for net in used:
                self._blocks_seen.pop(net, None)
            return False
        failpoints.reached("ipam-assign-after-commit")
        for net in used:
            kv, _, block, _ = working[net]
            self._blocks_seen[net] = KV(kv.key, txn.puts[kv.key], revision)
            self._blocks_parsed[net] = (revision, block)
        for ticket, net, ips, handle in placed:
            ticket.call.got[ticket.version] += ips
            ticket.call.observe(handle)
            ticket.ips = ips
        return True

    def _commit_allocation(self, txn: Txn, call: _Call) -> int:
        """Commit an allocation, unless the caller's deadline is too near."""
        call.check_deadline()
        failpoints.reached("ipam-assign-before-commit")
        revision = self.store.commit(txn)
        if revision:
            failpoints.reached("ipam-assign-after-commit")
        return revision

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

    def _assign_family(self, version, call: _Call, pools) -> None:
        """Allocate what ``call`` still lacks of one IP version, or raise."""
        call.check_deadline()
        if call.request_id and not call.observed:
            kv = self.store.get(keys.handle(call.handle_id))
            call.observe(Handle.from_json(call.handle_id, kv.json() if kv else None))
        if call.missing(version) <= 0:
            return

        def take(block_net, pool_kv):
            self._allocate_in_block(block_net, version, call, pool_kv)
            return call.missing(version) <= 0

        # 1. Blocks this host already has.
        own = self._host_blocks(call.host, version, pools)
        for block_net, pool_kv in own:
            if take(block_net, pool_kv):
                return
        # 2. New blocks for this host (or ones a concurrent claim of its made).
        tried = {net for net, _ in own}
        while self.max_blocks_per_host is None or len(tried) < self.max_blocks_per_host:
            new = self._claim_block(call, version, pools, tried)
            if new is None:
                break
            tried.add(new[0])
            if take(*new):
                return
        # 3. Borrow from other hosts' blocks.
        for kv in self.store.list(keys.blocks_prefix(version)):
            block = Block.from_json(kv.json())
            pool_kv = _pool_kv_of(block.cidr, pools)
            if pool_kv is None or block.host == call.host or not block.free:
                continue
            if take(block.cidr, pool_kv):
                return
        names = ", ".join(str(p.cidr) for p, _ in pools)
        wanted = call.want[version]
        raise PoolExhausted(
            f"Not enough free IPv{version} addresses: wanted {wanted}, found "
            f"{wanted - call.missing(version)} in {names}. Add a pool or release addresses.")

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
            if self._finish_claim(host, net, kv, pool_kv):
                found.append((net, pool_kv))
        found.sort(key=lambda f: f[0])
        self._host_blocks_seen[(host, version)] = list(found)
        return found

    def _finish_claim(self, host, net, aff_kv: KV | None, pool_kv: KV) -> bool:
        """Say whether the host has the block of this affinity (as read:
        ``aff_kv``), completing a pending claim (or dropping one another
        host's block beat) on the way. A write that loses a race (a
        concurrent claim of the same host finishing it first) re-reads and
        decides again."""
        confirmed = {"state": CONFIRMED}
        aff_key = keys.affinity(host, net)
        for _ in range(DEFAULT_ATTEMPTS):
            block_kv = self.store.get(keys.block(net))
            if block_kv is None:
                if aff_kv is None:
                    return False
                txn = Txn().create(keys.block(net), Block.empty(net, host).to_json())
                txn.update(aff_kv, confirmed).require_unchanged(pool_kv)
            elif block_host(block_kv.json()) == host:
                if aff_kv is not None and aff_kv.json()["state"] == CONFIRMED:
                    return True
                txn = Txn().put(aff_key, aff_kv, confirmed)
            else:
                if aff_kv is not None:
                    self.store.commit(Txn().delete(aff_kv))     # only as read
                return False
            if self.store.commit(txn):
                return True
            current = self.store.get(aff_key)
            if block_kv is None and current == aff_kv and \
                    self.store.get(keys.block(net)) is None:
                return False        # the pool changed: nothing to finish in it
            aff_kv = current
        return False

    def _adopt_claim(self, host, version, pool, pool_kv, tried) -> tuple | None:
        """A block of the host's in ``pool`` that it has not tried yet: one a
        concurrent claim for the same host made (or is making) meanwhile."""
        for kv in self.store.list(keys.host_affinities_prefix(host, version)):
            _, net = keys.parse_affinity(kv.key)
            if net in tried or not within(net, pool.cidr):
                continue
            if self._finish_claim(host, net, kv, pool_kv):
                self._remember(host, net, pool_kv)
                return net, pool_kv
        return None

    def _claim_block(self, call: _Call, version, pools, tried) -> tuple | None:
        host = call.host
        for pool, pool_kv in pools:
            taken = {keys.parse_block(kv.key) for kv in self._pool_blocks(pool)}
            # Read after the blocks: any block seen taken has its affinity visible.
            adopted = self._adopt_claim(host, version, pool, pool_kv, tried)
            if adopted:
                return adopted
            if len(taken) >= pool.num_blocks:
                continue
            for net in pool.blocks_from(host):
                if net in taken or net in tried:
                    continue
                block_key, aff_key = keys.block(net), keys.affinity(host, net)
                # Phase 1: record the intent.
                call.check_deadline()
                phase1 = Txn().create(aff_key, {"state": PENDING}).require_absent(block_key)
                created = self.store.commit(phase1)
                if not created:
                    # Another claim of this host got there first (finish and use
                    # it), or another host's block is there.
                    aff_kv = self.store.get(aff_key)
                    if aff_kv is not None and self._finish_claim(host, net, aff_kv, pool_kv):
                        self._remember(host, net, pool_kv)
                        return net, pool_kv
                    taken.add(net)
                    continue
                failpoints.reached("ipam-claim-between-phases")
                # Phase 2: create the block and confirm, atomically.
                mine = KV(aff_key, phase1.puts[aff_key], created)
                txn = Txn().create(block_key, Block.empty(net, host).to_json())
                txn.update(mine, {"state": CONFIRMED}).require_unchanged(pool_kv)
                if self.store.commit(txn) or self._settle_lost_claim(host, net, mine, pool_kv):
                    self._remember(host, net, pool_kv)
                    return net, pool_kv
                taken.add(net)
                current = self.pools.get(pool.cidr)
                if current is None or current[0].disabled:
                    break
                pool_kv = current[1]
        return None

    def _settle_lost_claim(self, host, net, mine: KV, pool_kv: KV) -> bool:
        """After phase 2 failed: whether the block is the host's anyway (a
        concurrent claim of the host finished this one). If not, delete our
        pending affinity, and only it (compared by the revision we wrote)."""
        block_kv = self.store.get(keys.block(net))
        if block_kv is not None and block_host(block_kv.json()) == host:
            return self._finish_claim(host, net, self.store.get(mine.key), pool_kv)
        self.store.commit(Txn().delete(mine))
        return False

    def _remember(self, host, net, pool_kv) -> None:
        seen = self._host_blocks_seen.setdefault((host, net.version), [])
        if all(n != net for n, _ in seen):
            seen.append((net, pool_kv))

    def _allocate_in_block(self, net, version, call: _Call, pool_kv) -> list[str]:
        """Allocate in one block what ``call`` still lacks of ``version`` (as
        far as the block has room), block and handle in one transaction."""
        state = {"pool_kv": pool_kv}
        handle_key = keys.handle(call.handle_id)

        def attempt():
            kv = self.store.get(keys.block(net))
            if kv is None:
                return []
            handle_kv = self.store.get(handle_key)
            handle = Handle.from_json(call.handle_id, handle_kv.json() if handle_kv else None)
            call.observe(handle)
            need = call.missing(version)
            if need <= 0:
                return []
            block = Block.from_json(kv.json())
            ips = block.allocate(need, call.handle_id, call.host, call.attrs)
            if not ips:
                return []
            call.add_to(handle, str(net), ips)
            txn = Txn().update(kv, block.to_json()).require_unchanged(state["pool_kv"])
            txn.put(handle_key, handle_kv, handle.to_json())
            revision = self._commit_allocation(txn, call)
            if revision:
                self._blocks_seen[net] = KV(kv.key, txn.puts[kv.key], revision)
                call.got[version] += ips
                call.observe(handle)
                return ips
            current = self.store.get(state["pool_kv"].key)
            if current is None or Pool.from_json(current.json()).disabled:
                return []
            state["pool_kv"] = current
            return None
        return retry(f"allocating in block {net}", attempt)

    def _roll_back(self, call: _Call) -> None:
        """Take back what a failed call allocated. With a request id, only
        while the request's record is incomplete: a complete record may have
        answered another attempt of the same request."""
        ips = call.got[4] + call.got[6]
        if not ips:
            return
        if not call.request_id:
            self.release_ips(ips, call.handle_id)
            return
        handle_key = keys.handle(call.handle_id)

        def still_incomplete(txn):
            kv = self.store.get(handle_key)
            record = Handle.from_json(call.handle_id, kv.json() if kv else None) \
                .requests.get(call.request_id)
            if kv is None or record is None or record.complete:
                return False
            txn.require_unchanged(kv)
            return True
        for net, wanted in self._by_block(ips).items():
            self._release_in_block(net, lambda b, w=wanted: b.release(w, call.handle_id),
                                   guard=still_incomplete)

    def _handle_changes(self, txn: Txn, block: Block, changes: dict[str, list[str]],
                        sign: int) -> None:
        """Add to ``txn`` the handle updates for the addresses (per handle)
        gained (+1) or lost (-1) in ``block``."""
        for handle_id, ips in changes.items():
            key = keys.handle(handle_id)
            kv = self.store.get(key)
            handle = Handle.from_json(handle_id, kv.json() if kv else None)
            if sign > 0:
                handle.add(str(block.cidr), len(ips))
            else:
                handle.remove(str(block.cidr), len(ips))
                handle.forget(ips)
            if handle.empty:
                if kv:
                    txn.delete(kv)
                else:
                    txn.require_absent(key)
            else:
                txn.put(key, kv, handle.to_json())

    def assign_ip(self, ip: str, handle_id: str, host: str,
                  attributes: dict[str, str] | None = None,
                  deadline: float | None = None) -> Pool:
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
        call = _Call(handle_id, host, dict(attributes or {}), {4: 0, 6: 0},
                     deadline=deadline, clock=self.clock)
        if self.store.get(keys.block(net)) is None:
            # Claim the block for this host; if someone beats us to it we
            # simply borrow the address from their block below.
            self._claim_specific(call, net, pool_kv)
        state = {"pool_kv": pool_kv}

        def attempt():
            kv = self.store.get(keys.block(net))
            if kv is None:
                # Our claim lost, and so did the other side's: claim again.
                self._claim_specific(call, net, state["pool_kv"])
                return None
            block = Block.from_json(kv.json())
            if not block.assign(str(addr), handle_id, host, call.attrs):
                raise AddressTaken(addr, pool.cidr)
            txn = Txn().update(kv, block.to_json()).require_unchanged(state["pool_kv"])
            self._handle_changes(txn, block, {handle_id: [str(addr)]}, sign=+1)
            if self._commit_allocation(txn, call):
                return pool
            current = self.pools.get(pool.cidr)     # the pool may have changed
            if current is None or current[0].disabled:
                raise NoPool(f"Pool {pool.cidr} was disabled or removed meanwhile.")
            state["pool_kv"] = current[1]
            return None
        return retry(f"assigning {addr}", attempt)

    def _claim_specific(self, call: _Call, net, pool_kv) -> None:
        aff_key = keys.affinity(call.host, net)
        call.check_deadline()
        self.store.commit(Txn().create(aff_key, {"state": PENDING}))
        aff_kv = self.store.get(aff_key)
        if aff_kv is not None and aff_kv.json()["state"] == PENDING:
            self._finish_claim(call.host, net, aff_kv, pool_kv)

    # Release ---------------------------------------------------------------

    def release_ips(self, ips: list[str], handle_id: str | None = None, force: bool = False
                    ) -> tuple[list[str], list[str]]:
        """Free addresses; returns (released, not_assigned). Without a handle
        (an operator freeing addresses by value), an address an active
        endpoint lists is refused unless ``force``."""
        if handle_id:
            validate_handle(handle_id)
        addrs = [parse_ip(ip) for ip in ips]
        if not handle_id and not force:
            view = owners.View.read(self.store)
            for addr in addrs:
                users = view.users(str(addr))
                if users:
                    raise AddressInUse(addr, owners.EndpointUse.of(users[0], [str(addr)]))
        not_assigned: list[str] = []
        pools = self.pools.list()
        wanted = []
        for addr in addrs:
            if any(addr in p.cidr for p, _ in pools):
                wanted.append(str(addr))
            else:
                not_assigned.append(str(addr))
        released: list[str] = []
        for net, in_block in self._by_block(wanted, pools).items():
            freed = self._release_in_block(net, lambda b, w=in_block: b.release(w, handle_id))
            released += freed
            not_assigned += [ip for ip in in_block if ip not in freed]
        return released, not_assigned

    def _by_block(self, ips: list[str], pools=None) -> dict[keys.Network, list[str]]:
        """Addresses grouped by block, blocks in address order."""
        pools = self.pools.list() if pools is None else pools
        by_block: dict[keys.Network, list[str]] = defaultdict(list)
        for ip in ips:
            addr = ipaddress.ip_address(ip)
            pool = next((p for p, _ in pools if addr in p.cidr), None)
            if pool is not None:
                by_block[pool.block_of(addr)].append(ip)
        return dict(sorted(by_block.items(), key=lambda item: _order(item[0])))

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

    def _release_in_block(self, net, change, guard=None) -> list[str]:
        """Free what ``change(block)`` frees, committing the block and its
        owners' handles together; when more owners are involved than one
        transaction may touch, in several rounds. ``guard(txn)``, when given,
        may add conditions to each round's transaction, or say (False) that
        nothing is to be freed after all. A block without affinity goes with
        its last address."""
        def attempt():
            kv = self.store.get(keys.block(net))
            if kv is None:
                return [], False
            txn = Txn()
            if guard is not None and not guard(txn):
                return [], False
            block = Block.from_json(kv.json())
            before = {o: a.handle_id for o, a in block.allocations.items()}
            freed = change(block)
            if not freed:
                return [], False
            lost: dict[str, list[str]] = defaultdict(list)
            for ip in freed:
                lost[before[block.ordinal(ip)]].append(ip)
            more = len(lost) > MAX_HANDLES_PER_TXN
            if more:
                lost = dict(list(lost.items())[:MAX_HANDLES_PER_TXN])
                block = Block.from_json(kv.json())
                freed = block.release([ip for ips in lost.values() for ip in ips])
            gone = block.host is None and not block.allocations
            if gone:
                txn.delete(kv)
            else:
                txn.update(kv, block.to_json())
            self._handle_changes(txn, block, lost, sign=-1)
            revision = self.store.commit(txn)
            if not revision:
                return None
            if gone:
                self._blocks_seen.pop(net, None)
            else:
                self._blocks_seen[net] = KV(kv.key, txn.puts[kv.key], revision)
            return freed, more
        released = []
        while True:
            freed, more = retry(f"releasing in block {net}", attempt)
            released += freed
            if not more:
                return released

    def release_orphan(self, ip: str, handle_id: str, still_orphaned: Callable[[], bool],
                       proof: str | None = None) -> bool:
        """Release ``ip`` from ``handle_id`` if it is still that handle's and
        ``still_orphaned()`` right before the commit; with ``proof``, only
        while that key is absent, in the same transaction. Says whether it did."""
        addr = parse_ip(ip)
        found = self.pools.containing(addr)
        if found is None:
            return False
        net = found[0].block_of(addr)

        def guard(txn):
            if not still_orphaned():
                return False
            if proof:
                txn.require_absent(proof)
            return True
        return bool(self._release_in_block(net, lambda b: b.release([str(addr)], handle_id),
                                           guard=guard))

    # Retiring a host -------------------------------------------------------

    def release_host(self, host: str) -> HostRelease:
        """Everything IPAM holds for ``host``: the addresses under its handles
        (``<host>/...``) are released, its blocks that hold nothing else are
        deleted, those that still hold other hosts' addresses lose their
        affinity (and go once empty), and its affinities are deleted."""
        validate_host(host)
        mine = f"{host}/"
        released = []
        for kv in self.store.list(keys.handles_prefix(mine)):
            released += self.release_by_handle(keys.parse_handle(kv.key))
        # Addresses of its handles that no handle record lists (see check()).
        for kv in self.store.list(keys.blocks_prefix()):
            block = Block.from_json(kv.json())
            if any(a.handle_id.startswith(mine) for a in block.allocations.values()):
                released += self._release_in_block(block.cidr, lambda b: b.release(
                    [b.ip(o) for o, a in b.allocations.items() if a.handle_id.startswith(mine)]))
        freed, unaffined = [], []
        nets = {keys.parse_affinity(kv.key)[1] for version in (4, 6)
                for kv in self.store.list(keys.host_affinities_prefix(host, version))}
        nets |= {keys.parse_block(kv.key) for kv in self.store.list(keys.blocks_prefix())
                 if block_host(kv.json()) == host}
        for net in sorted(nets, key=_order):
            outcome = retry(f"retiring block {net} of host {host}",
                            lambda n=net: self._retire_block(host, n))
            if outcome == "freed":
                freed.append(str(net))
            elif outcome == "kept":
                unaffined.append(str(net))
        for version in (4, 6):
            self._host_blocks_seen.pop((host, version), None)
        return HostRelease(sorted(released, key=lambda ip: _order(ipaddress.ip_address(ip))),
                           freed, unaffined)

    def _retire_block(self, host, net) -> str | None:
        """One attempt at a block of a retiring host: "freed" (deleted), "kept"
        (without affinity), "" (at most an affinity went) or None (lost a race)."""
        block_kv = self.store.get(keys.block(net))
        aff_kv = self.store.get(keys.affinity(host, net))
        txn = Txn()
        if aff_kv is not None:
            txn.delete(aff_kv)
        outcome = ""
        if block_kv is not None and block_host(block_kv.json()) == host:
            block = Block.from_json(block_kv.json())
            if block.allocations:
                block.host = None
                txn.update(block_kv, block.to_json())
                outcome = "kept"
            else:
                txn.delete(block_kv)
                outcome = "freed"
        elif block_kv is not None:
            txn.require_unchanged(block_kv)
        if not txn.compares:
            return outcome
        if not self.store.commit(txn):
            return None
        self._blocks_seen.pop(net, None)
        return outcome

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

    def check(self) -> tuple[list[checks.Problem], int, int]:
        """Cross-check the records (services.ipam.checks)."""
        return checks.check(self.store, self.list_pools())


def _name_users(users: list[owners.EndpointUse]) -> str:
    named = ", ".join(u.describe() for u in users[:NAMED_USERS])
    more = len(users) - NAMED_USERS
    return named + (f" and {more} more" if more > 0 else "")


def _pool_kv_of(net, pools) -> KV | None:
    for pool, kv in pools:
        if within(net, pool.cidr):
            return kv
    return None


def _order(net):
    """Sort key for networks of mixed IP versions."""
    return net.version, net
