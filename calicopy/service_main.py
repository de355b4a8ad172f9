"""The process around a cluster-wide service (IPAM, BGP, policy).

Each such service is stateless over etcd: its process parses where to listen
and where etcd is, waits for etcd, builds its server (the service's own
composition step, passed in), serves until SIGTERM/SIGINT and stops
gracefully. Its unix sockets are root-only (0600), whatever the umask.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from docopt import docopt

from calicopy import config, logs, metrics
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import DatastoreUnavailable
from calicopy.tls import Security

USAGE = """{title}

Run as `python -m {module}`.

Usage:
  {program} [--listen=<ADDRS>] [--etcd-endpoints=<EPS>] [--tls-ca=<FILE>]
            [--tls-cert=<FILE>] [--tls-key=<FILE>] [--insecure] [--metrics=<ADDR>]{extra_usage}

Options:
  --listen=<ADDRS>         Comma-separated host:port or unix:<path> addresses
                           to serve on; else {listen_env}, else {default}.
  --etcd-endpoints=<EPS>   Comma-separated etcd client URLs; else ETCD_ENDPOINTS
                           or ETCD_AUTHORITY, else 127.0.0.1:2379. With
                           https:// (or unixs:), ETCD_CA_CERT_FILE,
                           ETCD_CERT_FILE and ETCD_KEY_FILE give the TLS files.
  --tls-ca=<FILE>          The CA clients' certificates must be signed by; else
                           CALICO_TLS_CA_FILE.
  --tls-cert=<FILE>        This service's certificate; else CALICO_TLS_CERT_FILE.
  --tls-key=<FILE>         Its key; else CALICO_TLS_KEY_FILE.
  --insecure               Serve TCP addresses in plaintext, every caller acting
                           as admin: for throw-away labs only (logged at start).
                           Without TLS files or this, a TCP address is refused.
  --metrics=<ADDR>         host:port to serve Prometheus metrics on over HTTP
                           (port 0: any free one; the log says which), or off;
                           else CALICO_METRICS_ADDR, else 127.0.0.1:{metrics_port}.
{extra_options}
TCP addresses are served with mutual TLS; unix sockets are root-only. Every
call is authorised by the caller's certificate (calicopy.authz).
"""

ETCD_WAIT = 30.0


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT: how every calico-py process is told
    to stop gracefully."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def describe(security: Security) -> str:
    """How TCP is served, for the start-up log line."""
    if security.tls is not None:
        return f"mutual TLS as {security.tls.identity}"
    return "PLAINTEXT TCP (--insecure): for throw-away labs only" if security.insecure \
        else "unix sockets only"


@dataclasses.dataclass(frozen=True)
class Options:
    """A service's own options: its usage line's tail, their descriptions
    (in the Options section's layout), and a parser of docopt's arguments
    into keyword arguments for its ``build`` (raising ConfigError on a bad
    value)."""

    usage: str
    text: str
    parse: Callable[[dict], dict]


def run(title: str, module: str, program: str, listen_param: config.Param,
        build: Callable[..., object], argv=None, options: Options | None = None) -> int:
    log = logging.getLogger(program)
    process = program.removeprefix("calico-")
    logs.setup(process)
    doc = USAGE.format(title=title, module=module, program=program,
                       metrics_port=config.METRICS_PORTS[process],
                       listen_env=" or ".join(listen_param.env), default=listen_param.default,
                       extra_usage=f"\n            {options.usage}" if options else "",
                       extra_options=options.text if options else "")
    args = docopt(doc, argv)
    try:
        extra = options.parse(args) if options else {}
        listen = listen_param.resolve(args["--listen"])
        metrics_addr = config.metrics_addr(process, args["--metrics"])
        security = Security.from_env(ca=args["--tls-ca"], cert=args["--tls-cert"],
                                     key=args["--tls-key"], insecure=args["--insecure"] or None)
        store = EtcdStore.from_env(args["--etcd-endpoints"])
        for addr in listen:
            if addr.startswith("unix:") and os.path.exists(addr[len("unix:"):]):
                os.unlink(addr[len("unix:"):])      # left by a previous run
        server = build(listen, store, security, **extra)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
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

    metrics.serve(process, metrics_addr)
    server.start()
    log.info("listening on %s (%s; etcd %s)", ", ".join(listen), describe(security),
             store.endpoints)

    stop_event().wait()
    log.info("stopping")
    server.stop(grace=5).wait()
    store.close()
    return 0
