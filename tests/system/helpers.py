"""Waiting, reading and probing helpers shared by the system tests."""

import time

from calicopy.docker_engine import client

NET = ("net",)        # the open profile the `pools` fixture creates


def wait_for(what, condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def inspect(host, name) -> dict:
    """Docker's inspect of a container on ``host``'s engine (through the
    Calico proxy while it serves the engine's usual socket)."""
    docker = client(str(host.engine.sock))
    try:
        return docker.api.inspect_container(name)
    finally:
        docker.close()


def pings(host, container, ip):
    """Whether the Docker ``container`` on ``host`` gets an answer to one ping."""
    return host.docker("exec", container, "ping", "-c", "1", "-W", "1", ip,
                       check=False).returncode == 0


def reaches(host, container, ip, timeout=20):
    """Wait until the Docker ``container`` on ``host`` pings ``ip``."""
    wait_for(f"{container} to reach {ip}", lambda: pings(host, container, ip), timeout)


def allocated(ipam_client):
    """How many addresses the IPAM service has given out, in all pools."""
    return sum(p.allocated for p in ipam_client.get_usage().pools)


def established(host, count):
    """Whether `calicoctl status` on ``host`` shows ``count`` established sessions."""
    return host.calicoctl("status").stdout.count("Established") >= count


def block_routes(host, v6=False):
    """Routes the host learned over BGP (its own blocks' blackholes excluded)."""
    return [line.split()[0] for line in host.routes(v6).splitlines()
            if "proto bird" in line and not line.startswith(("blackhole", "unreachable"))]
