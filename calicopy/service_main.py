"""The process around a cluster-wide service (IPAM, BGP, policy).

Each such service is stateless over etcd: its process parses where to listen
and where etcd is, waits for etcd, builds its server (the service's own
composition step, passed in), serves until SIGTERM/SIGINT and stops
gracefully. Its unix sockets are root-only (0600), whatever the umask.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from docopt import docopt

from calicopy import config
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import DatastoreUnavailable
from calicopy.localfiles import private_socket, private_umask, unix_paths

USAGE = """{title}

Run as `python -m {module}`.

Usage:
  {program} [--listen=<ADDRS>] [--etcd-endpoints=<EPS>]

Options:
  --listen=<ADDRS>         Comma-separated host:port or unix:<path> addresses
                           to serve on; else {listen_env}, else {default}.
  --etcd-endpoints=<EPS>   Comma-separated etcd host:port list; else
                           ETCD_ENDPOINTS or ETCD_AUTHORITY, else 127.0.0.1:2379.
"""

ETCD_WAIT = 30.0


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT: how every calico-py process is told
    to stop gracefully."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run(title: str, module: str, program: str, listen_param: config.Param,
        build: Callable[[list[str], EtcdStore], object], argv=None) -> int:
    log = logging.getLogger(program)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    doc = USAGE.format(title=title, module=module, program=program,
                       listen_env=" or ".join(listen_param.env), default=listen_param.default)
    args = docopt(doc, argv)
    try:
        listen = listen_param.resolve(args["--listen"])
        endpoints = config.ETCD_ENDPOINTS.resolve(args["--etcd-endpoints"])
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1

    store = EtcdStore(endpoints)
    deadline = time.monotonic() + ETCD_WAIT
    while True:
        try:
            store.check()
            break
        except DatastoreUnavailable as exc:
            if time.monotonic() > deadline:
                log.error("%s", exc)
                return 1
            time.sleep(0.5)

    for addr in listen:
        if addr.startswith("unix:") and os.path.exists(addr[len("unix:"):]):
            os.unlink(addr[len("unix:"):])      # left by a previous run
    with private_umask():            # unix sockets root-only from the start
        server = build(listen, store)
    for path in unix_paths(listen):
        private_socket(path)
    server.start()
    log.info("listening on %s (etcd %s)", ", ".join(listen), store.endpoints)

    stop_event().wait()
    log.info("stopping")
    server.stop(grace=5).wait()
    store.close()
    return 0
