"""Network namespaces: naming them, checking them, and talking netlink inside them.

A netlink socket is bound to the namespace it is created in, so we create it
in a short-lived thread that has entered the workload's namespace (setns
affects only the calling thread) and use it from ours. No fork, no subprocess.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import threading

from calicopy.errors import FailedPrecondition, InvalidArgument


class NotANamespace(InvalidArgument):
    def __init__(self, path):
        super().__init__(f"{path} is not a network namespace.")


class WorkloadNotRunning(FailedPrecondition):
    def __init__(self, workload):
        super().__init__(f"{workload} is not currently running.")

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703      # ioctl: which kind of namespace an nsfs file is
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def path_for(netns_path: str | None = None, pid: int | None = None) -> str:
    """The namespace file for a path, a name under /var/run/netns, or a pid."""
    if pid:
        return f"/proc/{pid}/ns/net"
    if netns_path and not netns_path.startswith("/"):
        return f"{NETNS_RUN_DIR}/{netns_path}"
    return netns_path or ""


def check(path: str, workload: str) -> None:
    """Raise unless ``path`` is a live network namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise WorkloadNotRunning(workload) from None
    except OSError:
        raise NotANamespace(path) from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        raise NotANamespace(path) from None
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        raise NotANamespace(path)


def alive(path: str) -> bool:
    try:
        check(path, path)
        return True
    except (WorkloadNotRunning, NotANamespace):
        return False


def socket_in(path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace at ``path`` (it stays bound to it)."""
    box: dict = {}

    def enter_and_open():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["sock"] = socket.socket(family, kind, proto)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=enter_and_open, name="netns-socket")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["sock"]


def netlink_socket(path: str) -> socket.socket:
    """A NETLINK_ROUTE socket inside the namespace at ``path``."""
    return socket_in(path, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
