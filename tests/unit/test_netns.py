"""Opening namespace files: never blocking, never anything but a network
namespace, never the host's (real files; no root needed)."""

import os
import threading
import time

import pytest

from calicopy import netns


def opened(path, refuse=frozenset()):
    """What open_namespace says of ``path`` (the exception's message, or
    "ok"), from a thread, failing if it takes a second."""
    box = {}

    def attempt():
        try:
            os.close(netns.open_namespace(path, "w1", refuse))
            box["said"] = "ok"
        except Exception as exc:        # noqa: BLE001 (the message is the result)
            box["said"] = str(exc)
    worker = threading.Thread(target=attempt, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=1)
    assert not worker.is_alive(), f"opening {path} blocked"
    assert time.monotonic() - started < 1
    return box["said"]


def test_a_fifo_socket_or_device_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert opened(str(fifo)) == f"{fifo} is not a network namespace."
    regular = tmp_path / "file"
    regular.write_text("x")
    for path in (str(regular), "/dev/null", str(tmp_path), "/proc/self/ns/mnt"):
        assert opened(path) == f"{path} is not a network namespace."
    assert opened(str(tmp_path / "gone")) == "w1 is not currently running."


def test_the_hosts_namespace_is_refused_when_asked():
    own = "/proc/self/ns/net"
    assert opened(own) == "ok"
    assert opened(own, netns.host_namespaces()) == \
        "w1 is using host networking; Calico cannot network it."
    assert opened(f"/proc/{os.getpid()}/ns/net", netns.host_namespaces()) == \
        "w1 is using host networking; Calico cannot network it."


def test_check_and_alive_use_the_same_rules(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert netns.alive("/proc/self/ns/net") and not netns.alive(str(fifo))
    with pytest.raises(netns.HostNamespace):
        netns.check("/proc/self/ns/net", "w1", netns.host_namespaces())
