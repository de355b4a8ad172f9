"""Network namespaces: naming them, opening them safely, and talking netlink inside them.

Opening a namespace file never blocks and never opens anything else: the
path is first opened with O_PATH (no open of the file itself: a FIFO, a
device or a socket cannot make us wait), it must be on nsfs (the file system
of namespace files, recognised by its device: every namespace file has the
same ``st_dev``) and only then is that same inode reopened for reading (through
/proc/self/fd, so nothing can be swapped in between) and asked its kind.
``open_namespace`` is the only way this code base opens one.

A workload's namespace is never the host's: ``check`` refuses, when asked,
the namespaces it is given (the node's own and that of PID 1), so a
``pid:`` of a host process, a path to the host's namespace or a Docker
container on host networking cannot get an interface (the host's default
route would be replaced by one into it).

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
    def __init__(self, path, why: OSError | None = None):
        super().__init__(f"{path} cannot be opened: {why.strerror}." if why and why.strerror
                         else f"{path} is not a network namespace.")


class WorkloadNotRunning(FailedPrecondition):
    def __init__(self, workload):
        super().__init__(f"{workload} is not currently running.")


class HostNamespace(InvalidArgument):
    def __init__(self, workload):
        super().__init__(f"{workload} is using host networking; Calico cannot network it.")


CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703      # ioctl: which kind of namespace an nsfs file is
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_nsfs_dev: int | None = None


def path_for(netns_path: str | None = None, pid: int | None = None) -> str:
    """The namespace file for a path, a name under /var/run/netns, or a pid."""
    if pid:
        return f"/proc/{pid}/ns/net"
    if netns_path and not netns_path.startswith("/"):
        return f"{NETNS_RUN_DIR}/{netns_path}"
    return netns_path or ""


def _nsfs() -> int:
    """The device number of nsfs (one for every namespace file)."""
    global _nsfs_dev
    if _nsfs_dev is None:
        _nsfs_dev = os.stat("/proc/self/ns/net").st_dev
    return _nsfs_dev


def namespace_key(path: str) -> tuple[int, int] | None:
    """(device, inode) naming the namespace at ``path``, None if unreadable;
    stat does not open the file, so it never blocks."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def host_namespaces() -> set[tuple[int, int]]:
    """The namespaces no workload may be given: this process's (the node's)
    and PID 1's (the machine's), when they can be read."""
    return {key for key in (namespace_key("/proc/self/ns/net"), namespace_key("/proc/1/ns/net"))
            if key is not None}


def open_namespace(path: str, workload: str = "",
                   refuse: set[tuple[int, int]] = frozenset()) -> int:
    """A read-only descriptor of the network namespace at ``path`` (the
    caller closes it), opened without blocking whatever ``path`` is.

    Raises WorkloadNotRunning when nothing is there, NotANamespace when it is
    not a network namespace file, HostNamespace when it is one of ``refuse``.
    """
    workload = workload or path
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise WorkloadNotRunning(workload) from None
    except OSError as exc:      # e.g. another process's namespace we may not see
        raise NotANamespace(path, exc) from None
    try:
        st = os.fstat(handle)
        if st.st_dev != _nsfs():
            raise NotANamespace(path)
        if (st.st_dev, st.st_ino) in refuse:
            raise HostNamespace(workload)
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise NotANamespace(path, exc) from None
    finally:
        os.close(handle)
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise NotANamespace(path)
    return fd


def check(path: str, workload: str, refuse: set[tuple[int, int]] = frozenset()) -> None:
    """Raise unless ``path`` is a live network namespace (and not one of ``refuse``)."""
    os.close(open_namespace(path, workload, refuse))


def alive(path: str) -> bool:
    try:
        check(path, path)
        return True
    except (WorkloadNotRunning, NotANamespace):
        return False


def socket_in(path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace at ``path`` (it stays bound to it)."""
    box: dict = {}
    fd = open_namespace(path)

    def enter_and_open():
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({path}): {os.strerror(err)}")
            box["sock"] = socket.socket(family, kind, proto)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    try:
        worker = threading.Thread(target=enter_and_open, name="netns-socket")
        worker.start()
        worker.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]
    return box["sock"]


def netlink_socket(path: str) -> socket.socket:
    """A NETLINK_ROUTE socket inside the namespace at ``path``."""
    return socket_in(path, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
