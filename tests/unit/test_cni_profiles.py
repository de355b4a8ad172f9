"""The calico plugin's memory of profiles the policy service confirmed."""

import os

from cni import profiles
from cni.config import Services


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def confirmed(tmp_path, clock, policy="unix:/run/policy.sock"):
    """Marks for an endpoint service whose JSON socket appeared an hour ago."""
    socket = tmp_path / "h1" / "endpoint.json.sock"
    if not socket.exists():
        socket.parent.mkdir(exist_ok=True)
        socket.touch()
        os.utime(socket, (clock.now - 3600, clock.now - 3600))
    services = Services("h1", f"unix:{tmp_path}/h1/endpoint.sock", "", policy, 10.0,
                        str(socket))
    return profiles.Confirmed(services, now=clock)


def test_remembered_for_a_while_next_to_the_endpoint_socket(tmp_path):
    clock = Clock()
    marks = confirmed(tmp_path, clock)
    assert not marks.recent("web")
    marks.remember("web")
    assert (tmp_path / "h1" / "cni-profiles" / "web").read_text() == "unix:/run/policy.sock"
    assert marks.recent("web") and not marks.recent("db")
    clock.now += profiles.FRESH - 1
    assert marks.recent("web")
    clock.now += 2                                  # too old: ask the policy service again
    assert not marks.recent("web")
    marks.remember("web")
    assert marks.recent("web")


def test_a_restarted_endpoint_service_makes_them_old(tmp_path):
    clock = Clock()
    marks = confirmed(tmp_path, clock)
    marks.remember("web")
    clock.now += 10
    os.utime(tmp_path / "h1" / "endpoint.json.sock", (clock.now, clock.now))  # a new socket
    assert not marks.recent("web")
    marks.remember("web")
    assert marks.recent("web")


def test_another_policy_service_has_not_confirmed_it(tmp_path):
    clock = Clock()
    confirmed(tmp_path, clock).remember("web")
    assert not confirmed(tmp_path, clock, policy="10.0.0.1:50052").recent("web")


def test_names_the_policy_service_would_refuse_are_never_remembered(tmp_path):
    clock = Clock()
    marks = confirmed(tmp_path, clock)
    for name in ("../web", "a-b", "", "é", "x" * 65):
        marks.remember(name)
        assert not marks.recent(name)
    assert not (tmp_path / "h1" / "cni-profiles").exists()


def test_a_folder_that_cannot_be_written_only_costs_the_call(tmp_path):
    marks = confirmed(tmp_path, Clock())
    (tmp_path / "h1" / "cni-profiles").write_text("a file, not a folder")
    marks.remember("web")           # no error
    assert not marks.recent("web")
