"""calico-ipam: the IPAM service process (the composition root): the gRPC
server, and the garbage collector (services.ipam.gc) on a thread of its own."""

import logging
import sys
import threading

from calicopy import config, metrics, service_main
from services.ipam.allocator import Ipam
from services.ipam.gc import DEFAULT_GRACE, DEFAULT_INTERVAL, GarbageCollector
from services.ipam.server import create_server

log = logging.getLogger("calico-ipam")

def gc_settings(args: dict) -> dict:
    """--gc-interval and --gc-grace as build()'s keyword arguments."""
    settings = {}
    for flag, name, off in (("--gc-interval", "gc_interval", " (0 turns garbage collection "
                                                             "off)"),
                            ("--gc-grace", "gc_grace", ", 0 or more")):
        text = args[flag]
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0 or value == float("inf"):
            raise config.ConfigError(f"Invalid {flag} '{text}': give a number of "
                                     f"seconds{off}.")
        settings[name] = value
    return settings


OPTIONS = service_main.Options(
    usage="[--gc-interval=<SECONDS>] [--gc-grace=<SECONDS>]",
    text=f"""\
  --gc-interval=<SECONDS>  Seconds between garbage collection passes, which
                           release addresses whose owner (endpoint, node) is
                           gone [default: {DEFAULT_INTERVAL:g}]. 0 turns garbage
                           collection off.
  --gc-grace=<SECONDS>     How long an address must have been seen without an
                           owner (on two passes) before it is released
                           [default: {DEFAULT_GRACE:g}].
""",
    parse=gc_settings)


def pool_usage(ipam: Ipam):
    """calico_ipam_pool_addresses' samples, read from etcd at each scrape."""
    for pool in ipam.usage().pools:
        yield (pool["cidr"], "size"), pool["size"]
        yield (pool["cidr"], "allocated"), pool["allocated"]


def build(listen, store, security, gc_interval=DEFAULT_INTERVAL, gc_grace=DEFAULT_GRACE):
    ipam = Ipam(store)
    metrics.IPAM_POOL_ADDRESSES.set_function(lambda: pool_usage(ipam))
    if gc_interval:
        collector = GarbageCollector(Ipam(store), grace=gc_grace)
        # A daemon: it holds nothing a kill could leave half done (every
        # release is one transaction).
        threading.Thread(target=collector.run, args=(threading.Event(), gc_interval),
                         name="ipam-gc", daemon=True).start()
        log.info("garbage collection every %gs, grace %gs", gc_interval, gc_grace)
    else:
        log.info("garbage collection off (--gc-interval=0)")
    return create_server(listen, ipam, security=security)[0]


if __name__ == "__main__":
    sys.exit(service_main.run("calico-ipam: the IPAM service.", "services.ipam",
                              "calico-ipam", config.IPAM_LISTEN, build, options=OPTIONS))
