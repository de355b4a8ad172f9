"""Kernel features a node needs, checked before it starts."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess

# feature -> (kernel config option, what it is for)
REQUIRED = {
    "ip6_tables": ("CONFIG_IP6_NF_IPTABLES", "IPv6 policy"),
    "xt_set": ("CONFIG_NETFILTER_XT_SET", "policy by tag (ipsets)"),
}


def _built_in(option: str) -> bool:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return any(line.startswith(f"{option}=") and line.strip()[-1] in "ym" for line in f)
    except OSError:
        return False


def available(module: str) -> bool:
    if os.path.exists(f"/sys/module/{module}") or _built_in(REQUIRED[module][0]):
        return True
    if module == "ip6_tables" and os.path.exists("/proc/net/ip6_tables_names"):
        return True
    modprobe = shutil.which("modprobe")
    return bool(modprobe) and subprocess.run([modprobe, module], capture_output=True).returncode == 0


def missing() -> list[str]:
    """Sentences naming each missing feature, empty when all is there."""
    return [f"Kernel module {m} ({REQUIRED[m][1]}) is not available; load it with "
            f"'modprobe {m}'." for m in REQUIRED if not available(m)]
