"""Root-only folders and sockets whatever the umask (real files; no root needed)."""

import os
import socket
import stat

import pytest

from calicopy import localfiles


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_zero():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_private_dir_is_0700_and_its_new_parents_0755(tmp_path, umask_zero):
    folder = localfiles.private_dir(tmp_path / "state" / "node1")
    assert (mode(folder), mode(folder.parent)) == (0o700, 0o755)
    folder.chmod(0o777)
    localfiles.private_dir(folder)              # an existing one is made private too
    assert mode(folder) == 0o700


def test_shared_dir_leaves_an_existing_folder_alone(tmp_path, umask_zero):
    (tmp_path / "old").mkdir(mode=0o775)
    assert mode(localfiles.shared_dir(tmp_path / "old")) == 0o775
    assert mode(localfiles.shared_dir(tmp_path / "new" / "plugins")) == 0o755


def test_a_socket_is_bound_root_only_and_the_umask_restored(tmp_path, umask_zero):
    with socket.socket(socket.AF_UNIX) as sock:
        localfiles.bind_private(sock, str(tmp_path / "s.sock"))
        assert mode(tmp_path / "s.sock") == 0o600
    assert os.umask(0) == 0


def test_unix_paths():
    assert localfiles.unix_paths(["127.0.0.1:1", "unix:/a/b.sock"]) == ["/a/b.sock"]
    assert localfiles.unix_paths("unix:/c.sock") == ["/c.sock"]
