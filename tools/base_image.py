"""`make base-image`: the compose stack's Debian 12 base image, made with debootstrap.

``BASE_TAG`` is a Debian root filesystem that already holds every Debian
package the Dockerfile needs (``BASE_PACKAGES``), so that building the image
on it fetches only the Python wheels. The root filesystem is kept as a
tarball under ``CACHE``, keyed by the suite and package list: debootstrap runs
once per machine, later imports into an engine take seconds. The image
carries the key as the label ``BASE_LABEL``, so an engine's copy is replaced
when the list changes. Nothing is pulled from a registry.

Standard library only: it runs before (and without) the project's venv.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tools import processes

CACHE = Path(os.environ.get("CALICO_PY_CACHE", "/var/cache/calico-py"))
BASE_TAG = "calico-py/debian:bookworm"
SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the Dockerfile would otherwise install (python3-venv: pip for the venv).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "etcd-server", "bird2",
                 "iproute2", "iputils-ping", "iptables", "ipset")
BASE_KEY = hashlib.sha256(" ".join((SUITE,) + BASE_PACKAGES).encode()).hexdigest()[:12]
BASE_LABEL = "calico-py.base"


class BaseImageError(RuntimeError):
    pass


def ensure(stack) -> str:
    """``BASE_TAG`` in the engine of ``stack`` (a ``tools.compose.Stack``),
    imported from ``tarball()`` unless it is there with this key already."""
    if stack.image_label(BASE_TAG, BASE_LABEL) == BASE_KEY:
        return BASE_TAG
    path = tarball()
    print(f"Importing {path} as {BASE_TAG}")
    with open(path, "rb") as f:
        stack.docker("import", "--change", f"LABEL {BASE_LABEL}={BASE_KEY}",
                     "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["bash"]',
                     "-", BASE_TAG, input=f)
    return BASE_TAG


def tarball() -> Path:
    """The base root filesystem's tarball in ``CACHE``, made with debootstrap
    if it is not there yet (about 80 s and 60 MB of packages)."""
    path = CACHE / f"debian-{SUITE}-{BASE_KEY}.tar"
    if path.exists():
        return path
    if not shutil.which("debootstrap"):
        raise BaseImageError("debootstrap is not installed (make deps installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=CACHE))
    log = CACHE / "debootstrap.log"
    try:
        rootfs = work / "root"
        print(f"Making a Debian {SUITE} root filesystem with debootstrap from {MIRROR} "
              f"(log: {log})")
        with open(log, "wb") as out:
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 SUITE, str(rootfs), MIRROR], stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise BaseImageError(f"debootstrap exited with {result.returncode}; see {log}:\n"
                                 + processes.tail(log, 20))
        # What an image does not need: downloaded packages, package lists (the
        # Dockerfile updates them if it ever installs anything), documentation.
        for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                        "var/lib/apt/lists/*_*", "usr/share/doc/*", "usr/share/man/*",
                        "usr/share/locale/*", "var/log/*.log", "var/log/apt/*"):
            for found in rootfs.glob(pattern):
                if found.is_dir() and not found.is_symlink():
                    shutil.rmtree(found)
                else:
                    found.unlink()
        for name in ("etc/hostname", "etc/resolv.conf"):      # the engine provides them
            (rootfs / name).unlink(missing_ok=True)
        partial = work / "base.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
                       check=True)
        partial.rename(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def purge() -> None:
    """Delete the cached tarball (and the debootstrap log)."""
    shutil.rmtree(CACHE, ignore_errors=True)
