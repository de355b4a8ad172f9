"""The workload's namespace as the plugin sees it: is it one, is it the same
one, and (CHECK) does its interface still look like the result said.

Reading is done with ``ip -json`` run inside the namespace (``nsenter``),
the same view a person debugging would have; the plugin changes nothing in
the kernel: the endpoint service owns the plumbing.
"""

from __future__ import annotations

import json
import os

from cni.spec import INVALID_ENVIRONMENT, IO_FAILURE, UNKNOWN_CONTAINER, CniError


def check_namespace(path: str) -> None:
    """Raise the CNI error for a ``CNI_NETNS`` that is gone (3) or is not a
    network namespace (4)."""
    from calicopy.netns import NotANamespace, WorkloadNotRunning, check
    try:
        check(path, path)
    except WorkloadNotRunning:
        raise CniError(UNKNOWN_CONTAINER, f"The network namespace {path} does not exist.",
                       "CNI_NETNS") from None
    except NotANamespace:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {path} is not a network namespace.",
                       "CNI_NETNS") from None


def same_namespace(a: str, b: str) -> bool:
    """Whether two paths name the same namespace (/proc/<pid>/ns/net and a
    bind mount of it are different paths for one namespace)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _ip_json(path: str, ifname: str) -> tuple[dict | None, list, list]:
    """The interface (with its addresses) and its IPv4 and IPv6 routes."""
    import subprocess
    script = 'ip -j addr show dev "$1" || echo null; ip -j -4 route show dev "$1" || echo "[]"; ' \
             'ip -j -6 route show dev "$1" || echo "[]"'
    try:
        proc = subprocess.run(["nsenter", f"--net={path}", "sh", "-c", script, "sh", ifname],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(IO_FAILURE, f"Cannot read the network namespace {path}.", str(exc)) from None
    decoder, text, docs, pos = json.JSONDecoder(), proc.stdout, [], 0
    try:
        while len(docs) < 3:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            doc, pos = decoder.raw_decode(text, pos)
            docs.append(doc)
    except ValueError:
        raise CniError(IO_FAILURE, f"Cannot read the network namespace {path}.",
                       f"nsenter/ip said: {proc.stderr.strip() or text[:200]}") from None
    links, v4, v6 = docs
    return (links[0] if links else None), v4, v6


def verify(path: str, ifname: str, mac: str, nets: list[str], gw4: str, gw6: str) -> list[str]:
    """What differs in the namespace at ``path`` from what the endpoint
    should look like (see ``differences``); empty if nothing."""
    return differences(*_ip_json(path, ifname), ifname, mac, nets, gw4, gw6)


def differences(link: dict | None, v4: list, v6: list, ifname: str, mac: str, nets: list[str],
                gw4: str, gw6: str) -> list[str]:
    """What differs between ``ip -json`` output (the interface with its
    addresses, its IPv4 and IPv6 routes) and an interface ``ifname`` that is
    up, has MAC ``mac`` and the addresses ``nets`` (CIDRs), a link route to
    ``gw4`` and default routes through ``gw4`` and ``gw6``."""
    if link is None:
        return [f"interface {ifname} is missing"]
    problems = []
    if "UP" not in link.get("flags", []):
        problems.append(f"interface {ifname} is down")
    if mac and link.get("address", "").lower() != mac.lower():
        problems.append(f"interface {ifname} has MAC {link.get('address')}, not {mac}")
    have = {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
            if a.get("scope") != "link"}
    for net in nets:
        if net not in have:
            problems.append(f"address {net} is missing from {ifname}")

    def default_via(routes, gw):
        return any(r.get("dst") == "default" and r.get("gateway") == gw for r in routes)

    if gw4:
        if not any(r.get("dst") in (gw4, f"{gw4}/32") and "gateway" not in r for r in v4):
            problems.append(f"the route to {gw4} on {ifname} is missing")
        if not default_via(v4, gw4):
            problems.append(f"the default route via {gw4} is missing")
    if gw6 and not default_via(v6, gw6):
        problems.append(f"the IPv6 default route via {gw6} is missing")
    return problems
