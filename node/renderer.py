"""calico-bird-renderer: keeps one node's BIRD configuration in step with etcd,
and reports the node's BGP sessions back.

Run as `python -m node.renderer --name=<NODE> --config=<FILE> --ctl=<SOCKET>`
(the node supervisor does). It re-renders on every change under /calico/v1/
(an etcd watch) and every few seconds regardless. A new configuration is
written to a temporary file, checked with `bird -p`, moved into place
atomically, and BIRD is told to `configure` only when the text changed.
Every couple of seconds it writes the sessions BIRD reports to etcd under a
lease, so the report vanishes if the node stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from calicopy import config
from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import KV, Store, Txn
from calicopy.errors import CalicoError, Unavailable
from calicopy.service_main import stop_event
from node import bird, birdctl
from services.bgp.registry import BgpRegistry, Node
from services.ipam.pools import PoolRegistry

log = logging.getLogger("calico-bird-renderer")

RESYNC = 5.0
REPORT_EVERY = 2.0
REPORT_TTL = 10


def current_model(store: Store, name: str) -> bird.BirdModel | None:
    """The BIRD model for node ``name`` from etcd; None until it is registered."""
    registry = BgpRegistry(store)
    kv = store.get(keys.node(name))
    if kv is None:
        return None
    node = Node.from_json(kv.json())
    # The block records, not the affinities, say who owns a block: a stale
    # affinity must never make two hosts advertise the same block.
    blocks = [str(keys.parse_block(kv.key)) for kv in store.list(keys.blocks_prefix())
              if kv.json().get("affinity") == f"host:{name}"]
    pools = [str(pool.cidr) for pool, _ in PoolRegistry(store).list()]
    return bird.build_model(node, registry.list_nodes(), registry.config(),
                            registry.peers(), registry.peers(node=name), pools, blocks)


class Renderer:
    def __init__(self, store: Store, name: str, config_path: Path, ctl: str):
        self.store, self.name, self.path, self.ctl = store, name, config_path, ctl
        self.changed = threading.Event()
        self._configured: str | None = None    # the text BIRD last accepted
        self._report_kv: KV | None = None
        self._lease = 0

    def _on_event(self, response) -> None:
        if keys.changes_configuration(response):
            self.changed.set()

    def sync(self) -> bool:
        """Render and, if the text differs from what BIRD last accepted,
        install and reload. Says whether it did."""
        model = current_model(self.store, self.name)
        if model is None:
            return False
        text = bird.render(model)
        bird_up = os.path.exists(self.ctl)
        if text == self._configured and bird_up:
            return False
        if not self.path.exists() or self.path.read_text() != text:
            tmp = self.path.with_suffix(".new")
            tmp.write_text(text)
            birdctl.check_config(str(tmp))     # raises: the old config stays
            os.replace(tmp, self.path)
        if bird_up:
            birdctl.configure(self.ctl, str(self.path))   # raises: retried next pass
            self._configured = text
            log.info("BIRD configured: %d peer(s), %d block(s)", len(model.peers),
                     len(model.blocks))
        return True

    def report(self) -> None:
        """Write BIRD's view of the sessions to etcd, under a lease."""
        if not os.path.exists(self.ctl):
            return
        sessions = [s.__dict__ for s in birdctl.sessions(self.ctl)]
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
        watch = None
        next_report = 0.0
        while not stop.is_set():
            try:
                if watch is None:
                    watch = self.store.watch(keys.PREFIX, self._on_event)
                self.changed.clear()
                self.sync()
                if time.monotonic() >= next_report:
                    self.report()
                    next_report = time.monotonic() + REPORT_EVERY
            except Unavailable as exc:
                log.warning("%s", exc)
                if watch is not None:
                    self.store.cancel_watch(watch)
                    watch = None
            except CalicoError as exc:
                log.error("%s", exc)
            self.changed.wait(min(RESYNC, REPORT_EVERY))
            time.sleep(0.05)     # let a burst of changes land before rendering
        if watch is not None:
            self.store.cancel_watch(watch)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="calico-bird-renderer",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--name", help="this node's name (else CALICO_NODENAME, the hostname)")
    parser.add_argument("--config", required=True, help="the BIRD configuration file to keep")
    parser.add_argument("--ctl", required=True, help="BIRD's control socket")
    args = parser.parse_args(argv)
    try:
        name = config.NODENAME.resolve(args.name)
        store = EtcdStore(config.ETCD_ENDPOINTS.resolve())
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    stop = stop_event()
    Renderer(store, name, Path(args.config), args.ctl).run(stop)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
