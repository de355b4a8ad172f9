"""The renderer's BGP status report: written when the sessions change, kept
alive under its lease in between (an idle node adds nothing to etcd's history)."""

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
