"""The BIRD config renderer: keeps one node's BIRD configuration in step with
etcd, and reports the node's BGP sessions back.

Run by the shared watch loop (calicopy.datastore.watchloop): it re-renders on
every change under /calico/v1/ and every few seconds regardless (so a peer
that becomes directly connected, or stops being so, is re-rendered). A new
configuration is written to a temporary file, checked with `bird -p`, moved
into place atomically, and BIRD is told to `configure` only when the text
changed. Every couple of seconds it writes the sessions BIRD reports to etcd
under a lease, so the report vanishes if the node stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from calicopy import underlay
from calicopy.datastore import keys
from calicopy.datastore.store import KV, Store, Txn
from calicopy.datastore.watchloop import WatchLoop
from calicopy.model import bgp, ipam
from node.bird import conf, ctl

log = logging.getLogger("calico-bird-renderer")

RESYNC = 5.0
REPORT_EVERY = 2.0
REPORT_TTL = 10


def current_model(store: Store, name: str, connected=underlay.on_link
                  ) -> conf.BirdModel | None:
    """The BIRD model for node ``name`` from etcd (and, for which peers are
    directly connected, the host's routes); None until it is registered."""
    kv = store.get(keys.node(name))
    if kv is None:
        return None
    node = bgp.Node.from_json(kv.json())
    # The block records, not the affinities, say who owns a block: a stale
    # affinity must never make two hosts advertise the same block.
    blocks = [str(keys.parse_block(kv.key)) for kv in store.list(keys.blocks_prefix())
              if ipam.block_host(kv.json()) == name]
    pools = [str(pool.cidr) for pool in ipam.read_pools(store)]
    return conf.build_model(node, bgp.read_nodes(store), bgp.read_config(store),
                            bgp.read_peers(store), bgp.read_peers(store, node=name), pools,
                            blocks, connected)


class Renderer:
    def __init__(self, store: Store, name: str, config_path: Path, ctl: str):
        self.store, self.name, self.path, self.ctl = store, name, config_path, ctl
        self._configured: str | None = None    # the text BIRD last accepted
        self._report_kv: KV | None = None
        self._lease = 0

    def sync(self, full: bool = False, events=()) -> bool:
        """Render and, if the text differs from what BIRD last accepted,
        install and reload. Says whether it did."""
        model = current_model(self.store, self.name)
        if model is None:
            return False
        text = conf.render(model)
        bird_up = os.path.exists(self.ctl)
        if text == self._configured and bird_up:
            return False
        if not self.path.exists() or self.path.read_text() != text:
            tmp = self.path.with_suffix(".new")
            tmp.write_text(text)
            ctl.check_config(str(tmp))     # raises: the old config stays
            os.replace(tmp, self.path)
        if bird_up:
            ctl.configure(self.ctl, str(self.path))   # raises: retried next pass
            self._configured = text
            log.info("BIRD configured: %d peer(s), %d block(s)", len(model.peers),
                     len(model.blocks))
        return True

    def report(self) -> None:
        """Write BIRD's view of the sessions to etcd, under a lease."""
        if not os.path.exists(self.ctl):
            return
        sessions = [s.__dict__ for s in ctl.sessions(self.ctl)]
        if not self._lease or not self.store.refresh_lease(self._lease):
            self._lease, self._report_kv = self.store.grant_lease(REPORT_TTL), None
        key = keys.bgp_status(self.name)
        value = {"node": self.name, "sessions": sessions, "reported_at": time.time()}
        for _ in range(2):   # the cached revision may be stale once
            txn = Txn().put(key, self._report_kv, value, lease=self._lease)
            revision = self.store.commit(txn)
            if revision:
                self._report_kv = KV(key, txn.puts[key], revision)
                return
            self._report_kv = self.store.get(key)

    def run(self, stop: threading.Event) -> None:
        WatchLoop(self.store, keys.PREFIX, self.sync, log=log, resync=RESYNC, poll=RESYNC,
                  settle=0.05, tick=self.report, tick_every=REPORT_EVERY).run(stop)
