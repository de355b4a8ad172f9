"""The renderer's BGP status report: written when the sessions change, kept
alive under its lease in between (an idle node adds nothing to etcd's history)."""

import socket
import subprocess
import threading

import pytest

from calicopy.datastore import keys
from node.bird import ctl, renderer
from node.bird.renderer import Renderer
from services.bgp.registry import BgpRegistry
from tests.fakes import MemoryStore


def test_sessions_are_written_when_they_change_and_kept_alive_in_between(tmp_path,
                                                                          monkeypatch):
    store = MemoryStore()
    sock = tmp_path / "bird.ctl"
    sock.touch()                                    # BIRD is up
    up = ctl.Session("172.30.0.3", "mesh", "up", "06:20:48", "Established", 4)
    seen = [[up]]
    monkeypatch.setattr(renderer.ctl, "sessions", lambda path: seen[-1])
    r = Renderer(store, "h1", tmp_path / "bird.conf", str(sock))
    clock = [0.0]
    r.status._clock = lambda: clock[0]
    for _ in range(10):                             # 20 s of ticks, nothing changes
        r.report()
        clock[0] += renderer.REPORT_EVERY
    # One write; a keep-alive once a third of the lease's time has passed.
    assert store.commits == 1 and store.keepalives == 4
    [status] = BgpRegistry(store).status("h1")
    assert status["sessions"][0]["info"] == "Established" and status["reported_at"] > 0
    lease = r.status._lease
    assert keys.bgp_status("h1") in store.leases[lease]

    seen.append([ctl.Session("172.30.0.3", "mesh", "start", "06:21:00", "Active", 4)])
    r.report()
    assert store.commits == 2
    assert BgpRegistry(store).status("h1")[0]["sessions"][0]["state"] == "start"

    store.expire_lease(lease)                       # the node stopped: the report goes
    assert BgpRegistry(store).status("h1") == []


def test_a_report_written_after_its_lease_expired_gets_a_new_one(tmp_path, monkeypatch):
    store = MemoryStore()
    sock = tmp_path / "bird.ctl"
    sock.touch()
    sessions = [[]]
    monkeypatch.setattr(renderer.ctl, "sessions", lambda path: sessions[-1])
    r = Renderer(store, "h1", tmp_path / "bird.conf", str(sock))
    r.report()
    store.expire_lease(r.status._lease)      # the process stalled past the lease's time
    sessions.append([ctl.Session("172.30.0.3", "mesh", "up", "06:20:48", "Established", 4)])
    r.report()
    assert BgpRegistry(store).status("h1")[0]["sessions"][0]["state"] == "up"


# BIRD's control socket, as BIRD 2.0 answers `show protocols all` (captured).
GREETING = "0001 BIRD 2.0.12 ready.\n"
REPLY = ("2002-Name       Proto      Table      State  Since         Info\n"
         "1002-device1    Device     ---        up     07:57:29.227  \n"
         "1006-\n"
         "1002-Mesh_172_30_0_3 BGP        ---        start  07:57:33.896  Idle          "
         "BGP Error: Connection not synchronized\n"
         "1006-  BGP state:          Idle\n"
         "     Neighbor address: 172.30.0.3\n"
         "     Last error:       Connection not synchronized\n"
         " \n"
         "0000 \n")


def fake_bird(path, answers):
    """A control socket that greets, reads one command per connection and
    answers from ``answers`` (command -> reply); returns the commands it got."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    got = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(GREETING.encode())
                command = conn.makefile("r").readline().strip()
                got.append(command)
                conn.sendall(answers.get(command, "9001 syntax error\n").encode())
    threading.Thread(target=serve, daemon=True).start()
    return server, got


def test_sessions_are_read_over_the_control_socket_without_birdc(tmp_path, monkeypatch):
    def no_process(*args, **kwargs):
        raise AssertionError("a process was started")
    monkeypatch.setattr(subprocess, "Popen", no_process)
    server, got = fake_bird(tmp_path / "bird.ctl", {"show protocols all": REPLY})
    try:
        [session] = ctl.sessions(str(tmp_path / "bird.ctl"))
        assert (session.peer, session.state, session.info, session.last_error) == \
            ("172.30.0.3", "start", "Idle", "Connection not synchronized")
        with pytest.raises(ctl.BirdError, match="9001: syntax error"):
            ctl.query(str(tmp_path / "bird.ctl"), "show nonsense")
        assert got == ["show protocols all", "show nonsense"]
    finally:
        server.close()
    with pytest.raises(ctl.BirdError, match="FileNotFoundError"):
        ctl.query(str(tmp_path / "gone.ctl"), "show protocols all")
