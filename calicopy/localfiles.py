"""Root-only local files: node state folders and the unix sockets calico-py serves.

Whoever can connect to one of these sockets can change the node's network
(add interfaces, release addresses, drive BIRD or Docker), so each is owned
by root and 0600, and a node's state folder is 0700. The modes are set
explicitly, whatever the umask the process was started with, and a socket is
bound under a umask that leaves it root-only from its first instant, so there
is no moment when another user could connect. The umask is process-wide, so
changing it is serialised here; it only ever gets stricter meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

SOCKET_MODE = 0o600
FOLDER_MODE = 0o700
PARENT_MODE = 0o755         # folders above a state folder that we create
_UMASK = 0o077
_umask_lock = threading.Lock()


@contextlib.contextmanager
def private_umask():
    """Files, folders and sockets created meanwhile are root-only."""
    with _umask_lock:
        old = os.umask(_UMASK)
        try:
            yield
        finally:
            os.umask(old)


def shared_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` and missing parents as 0755 (never writable by others,
    whatever the umask); an existing folder is left as it is."""
    path = Path(path)
    for folder in reversed([p for p in [path, *path.parents] if not p.exists()]):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:          # made meanwhile by another process
            continue
        os.chmod(folder, PARENT_MODE)
    return path


def private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and missing parents, 0755) if needed; make it 0700."""
    path = shared_dir(path)
    os.chmod(path, FOLDER_MODE)
    return path


def private_socket(path: str | os.PathLike, mode: int = SOCKET_MODE, gid: int = -1) -> None:
    """Give a socket someone bound its mode (root-only unless told), and a group."""
    os.chmod(path, mode)
    if gid != -1:
        os.chown(path, -1, gid)


def bind_private(sock: socket.socket, path: str) -> None:
    """Bind a unix socket at ``path``, root-only from the start."""
    with private_umask():
        sock.bind(path)
    private_socket(path)


def unix_paths(addrs: str | list[str]) -> list[str]:
    """The socket paths among gRPC listen addresses (``unix:<path>``)."""
    return [a[len("unix:"):] for a in ([addrs] if isinstance(addrs, str) else addrs)
            if a.startswith("unix:")]
