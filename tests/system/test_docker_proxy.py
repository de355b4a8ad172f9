"""`docker run -e CALICO_IP=...` through the Calico Docker proxy: real dockerd
engines, one per simulated host, each host running `calicoctl node` (which
runs the proxy). Each engine is moved to its alternative socket with
`calicoctl restart-docker-with-alternative-unix-socket`; its "restart
command" renames the engine's listening socket, which keeps it serving under
the new name (a lab engine's state lives in its mount namespace, so it is not
restarted for real)."""

import grp
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from calicopy.docker_engine import real_socket
from calicopy.rpc import check_health
from node.docker_proxy.proxy import socket_access
from tests.cli import ok
from tests.system.helpers import allocated, established, inspect, pings, reaches, wait_for
from tools import launch
from tools.docker_engine import IMAGE
from tools.lab import ROOT

WITH = "restart-docker-with-alternative-unix-socket"
WITHOUT = "restart-docker-without-alternative-unix-socket"


def switch(host, proxied: bool, tmp_path):
    sock = str(host.engine.sock)
    old, new = (sock, real_socket(sock)) if proxied else (real_socket(sock), sock)
    return host.calicoctl(WITH if proxied else WITHOUT,
                          f"--daemon-config={tmp_path}/{host.name}-daemon.json",
                          f"--restart-command=mv {old} {new}", "--wait=10")


def run(host, name, *env, check=True, cmd=("sleep", "3600")):
    flags = [f for e in env for f in ("-e", e)]
    return host.docker("run", "-d", "--name", name, *flags, IMAGE, *cmd, check=check)


def ip_of(host, name) -> str:
    return inspect(host, name)["NetworkSettings"]["IPAddress"]


@pytest.fixture
def proxied(lab, pools, tmp_path):
    """Two hosts, a and b, each with its engine behind its node's proxy."""
    hosts = [lab.add_host(name, node=True, docker=True) for name in ("a", "b")]
    try:
        for host in hosts:
            out = ok(switch(host, True, tmp_path))
            assert f"The Calico Docker proxy serves {host.engine.sock}." in out, out
        wait_for("BGP sessions", lambda: all(established(h, 1) for h in hosts))
        yield hosts
    finally:
        for host in hosts:      # back to direct; the lab removes containers and engines
            if os.path.exists(real_socket(str(host.engine.sock))):
                switch(host, False, tmp_path)


def test_auto_address_inspect_exec_and_profiles_across_hosts(proxied, ipam_client):
    a, b = proxied
    run(a, "w1", "CALICO_IP=auto", "CALICO_PROFILE=web")
    run(b, "w2", "CALICO_IP=auto", "CALICO_PROFILE=web")
    run(b, "d1", "CALICO_IP=auto", "CALICO_PROFILE=db")
    w1, w2, d1 = ip_of(a, "w1"), ip_of(b, "w2"), ip_of(b, "d1")
    for ip in (w1, w2, d1):
        assert ip.startswith("10.20."), ip
    info = inspect(a, "w1")
    assert info["HostConfig"]["NetworkMode"] == "none"
    assert info["NetworkSettings"]["IPPrefixLen"] == 32
    assert info["NetworkSettings"]["Gateway"] == "169.254.1.1"
    # exec through the proxy, and what the container sees is what inspect says.
    addr = a.docker("exec", "w1", "ip", "-o", "link", "show", "eth0").stdout
    assert info["NetworkSettings"]["MacAddress"] in addr
    assert f"inet {w1}/32" in a.docker("exec", "w1", "ip", "-4", "-o", "addr").stdout
    # stdin through the hijacked connection, half-closed at its end.
    assert a.docker("exec", "-i", "w1", "cat", input="through the proxy\n").stdout == \
        "through the proxy\n"
    # Streams pass through as they come: logs -f shows a line while it goes on.
    run(a, "talker", cmd=("sh", "-c", "echo first; sleep 3600"))
    follow = subprocess.Popen(["/usr/bin/docker", "-H", a.engine.url, "logs", "-f", "talker"],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "DOCKER_CONFIG": str(a.engine.dir / "client")})
    try:
        assert follow.stdout.readline() == "first\n"
    finally:
        follow.kill()
        follow.wait()
    events = a.docker("events", "--since", "0", "--until", str(int(time.time()) + 1),
                      "--filter", "container=w1", "--format", "{{.Action}}").stdout.split()
    assert "start" in events, events
    # The profiles were created with the default rules: members reach members.
    reaches(a, "w1", w2)
    reaches(b, "w2", w1)
    assert not pings(b, "d1", w1) and not pings(a, "w1", d1)
    rules = json.loads(ok(a.calicoctl("profile", "web", "rule", "json")))
    assert rules["inbound_rules"] == [{"action": "allow", "src_tag": "web"}, {"action": "deny"}]
    # An attached `docker run --rm`: its output comes through, its address goes with it.
    out = a.docker("run", "--rm", "-e", "CALICO_IP=auto", IMAGE, "sh", "-c",
                   "for i in $(seq 50); do ip -4 -o addr show eth0 | grep -q inet && break; "
                   "sleep 0.1; done; ip -4 -o addr show eth0").stdout
    assert "inet 10.20." in out, out
    wait_for("the --rm container's address released", lambda: allocated(ipam_client) == 3)


def test_fixed_address_restart_and_rm(proxied, ipam_client, calicoctl):
    a, b = proxied
    run(a, "fixed", "CALICO_IP=10.20.99.5", "CALICO_PROFILE=web")
    run(b, "peer", "CALICO_IP=auto", "CALICO_PROFILE=web")
    assert ip_of(a, "fixed") == "10.20.99.5"
    mac = inspect(a, "fixed")["NetworkSettings"]["MacAddress"]
    reaches(b, "peer", "10.20.99.5")

    a.docker("restart", "-t", "1", "fixed")
    assert ip_of(a, "fixed") == "10.20.99.5"
    assert inspect(a, "fixed")["NetworkSettings"]["MacAddress"] == mac
    reaches(b, "peer", "10.20.99.5")
    a.docker("stop", "-t", "1", "fixed")
    assert allocated(ipam_client) == 2          # kept for it while it is stopped
    a.docker("start", "fixed")
    assert ip_of(a, "fixed") == "10.20.99.5"
    reaches(b, "peer", "10.20.99.5")

    a.docker("rm", "-f", "fixed")
    assert allocated(ipam_client) == 1
    assert "10.20.99.5" not in ok(a.calicoctl("container", "show"))
    ok(calicoctl("ipam", "check"))


def test_bad_calico_ip_fails_docker_run_and_leaves_nothing(proxied, ipam_client, calicoctl):
    a, b = proxied
    run(a, "first", "CALICO_IP=10.20.99.9")
    before = allocated(ipam_client)

    taken = run(b, "second", "CALICO_IP=10.20.99.9", check=False)
    assert taken.returncode != 0
    assert ("Calico could not network container second (CALICO_IP=10.20.99.9): IP address "
            "10.20.99.9 is already assigned in pool 10.20.0.0/16. The container was stopped."
            ) in taken.stderr, taken.stderr
    assert inspect(b, "second")["State"]["Running"] is False

    outside = run(a, "outside", "CALICO_IP=192.168.77.7", check=False)
    assert outside.returncode != 0
    assert "192.168.77.7 is not in any configured pool" in outside.stderr, outside.stderr

    malformed = run(a, "malformed", "CALICO_IP=10.20.1.300", check=False)
    assert malformed.returncode != 0
    assert "Invalid CALICO_IP '10.20.1.300': give an IP address" in malformed.stderr
    assert a.docker("ps", "-aq", "--filter", "name=malformed").stdout == ""   # never created
    bad_profile = run(a, "badprofile", "CALICO_IP=auto", "CALICO_PROFILE=a-b", check=False)
    assert bad_profile.returncode != 0 and "Invalid CALICO_PROFILE 'a-b'" in bad_profile.stderr

    assert allocated(ipam_client) == before
    ok(calicoctl("ipam", "check"))
    # A failed container can be removed like any other; its start is refused again.
    again = b.docker("start", "second", check=False)
    assert again.returncode != 0 and "already assigned" in again.stderr
    b.docker("rm", "second")
    assert allocated(ipam_client) == before


def test_rm_while_the_proxy_is_down_releases_the_address(proxied, ipam_client, calicoctl):
    a, _ = proxied
    run(a, "orphan", "CALICO_IP=auto")
    assert allocated(ipam_client) == 1
    real = real_socket(str(a.engine.sock))
    os.kill(a.child_pid("docker proxy"), 9)
    # Straight to the engine: nothing of Calico sees this removal happen.
    subprocess.run(["/usr/bin/docker", "-H", f"unix://{real}", "rm", "-f", "orphan"],
                   check=True, capture_output=True, timeout=30,
                   env={**os.environ, "DOCKER_CONFIG": str(a.engine.dir / "client")})
    wait_for("the supervisor to restart the proxy and the proxy to reconcile",
             lambda: allocated(ipam_client) == 0)
    ok(calicoctl("ipam", "check"))
    wait_for("the proxy serving again", lambda: a.docker("version", check=False).returncode == 0)


def test_calicoctl_container_commands_take_docker_names(proxied, ipam_client):
    a, b = proxied
    a.docker("run", "-d", "--name", "plain", "--net", "none", IMAGE, "sleep", "3600")
    run(b, "other", "CALICO_IP=auto", "CALICO_PROFILE=web")
    other = ip_of(b, "other")

    out = ok(a.calicoctl("container", "add", "plain", "10.20.98.1"))
    assert out == "IP 10.20.98.1 added to plain\n"
    assert ok(a.calicoctl("profile", "web", "member", "add", "plain")) == "Added plain to web\n"
    reaches(a, "plain", other)
    added = a.calicoctl("container", "add", "plain", "auto")
    assert added.returncode == 1
    assert added.stderr.strip() == "plain has already been configured with Calico Networking."
    assert ok(a.calicoctl("container", "plain", "ip", "add", "10.20.98.2")) == \
        "IP 10.20.98.2 added to plain\n"
    assert "inet 10.20.98.2/32" in a.docker("exec", "plain", "ip", "-4", "-o", "addr").stdout
    assert ok(a.calicoctl("container", "plain", "ip", "remove", "10.20.98.1")) == \
        "IP 10.20.98.1 removed from plain\n"
    # Docker's inspect, through the proxy, shows what calicoctl gave it.
    assert ip_of(a, "plain") == "10.20.98.2"

    a.docker("stop", "-t", "1", "plain")
    stopped = a.calicoctl("container", "plain", "ip", "add", "10.20.98.3")
    assert stopped.stderr.strip() == "plain is not currently running."
    a.docker("start", "plain")                   # the proxy re-instates its endpoint
    reaches(a, "plain", other)
    assert ok(a.calicoctl("container", "remove", "plain")) == \
        "Removed Calico interface from plain\n"
    gone = a.calicoctl("container", "remove", "plain")
    assert gone.stderr.strip() == "Container plain doesn't contain any endpoints."
    missing = a.calicoctl("container", "add", "nosuch", "auto")
    assert (missing.returncode, missing.stderr.strip()) == (1, "Container nosuch not found.")
    # A container on the host's network is the host: refused, and nothing changes.
    routes = a.routes(), a.routes(v6=True)
    a.docker("run", "-d", "--name", "hostnet", "--net", "host", IMAGE, "sleep", "3600")
    refused = a.calicoctl("container", "add", "hostnet", "auto")
    assert (refused.returncode, refused.stderr.strip()) == \
        (1, "hostnet is using host networking; Calico cannot network it.")
    assert (a.routes(), a.routes(v6=True)) == routes
    assert allocated(ipam_client) == 1


def test_switching_back_and_forth(proxied, tmp_path):
    a, _ = proxied
    sock, real = str(a.engine.sock), real_socket(str(a.engine.sock))
    again = ok(switch(a, True, tmp_path))
    assert again == f"The Docker engine already listens on {real}; nothing changed.\n"

    out = ok(switch(a, False, tmp_path)).splitlines()
    assert out == [
        f"Wrote {tmp_path}/a-daemon.json: \"hosts\" is now [\"unix://{sock}\"] "
        f"(was [\"unix://{real}\"]).",
        f"Ran: mv {real} {sock}",
        f"The Docker engine answers on {sock}."]
    assert not os.path.exists(real)
    assert a.docker("version", check=False).returncode == 0       # the engine, direct
    # Direct, the proxy still watches the engine: a container created with
    # --net none and CALICO_IP is networked after its start.
    a.docker("run", "-d", "--name", "direct", "--net", "none", "-e", "CALICO_IP=auto", IMAGE,
             "sleep", "3600")
    wait_for("the watcher to network the container", lambda: "inet 10.20." in a.docker(
        "exec", "direct", "ip", "-4", "-o", "addr").stdout)
    assert inspect(a, "direct")["NetworkSettings"]["IPAddress"] == ""     # Docker's own view

    out = ok(switch(a, True, tmp_path)).splitlines()
    assert out[0].startswith(f"Wrote {tmp_path}/a-daemon.json: \"hosts\" is now "
                             f"[\"unix://{real}\"]")
    assert out[1:] == [f"Ran: mv {sock} {real}", f"The Docker engine answers on {real}.",
                       f"The Calico Docker proxy serves {sock}."]
    assert ip_of(a, "direct").startswith("10.20.")        # filled in by the proxy again


def test_containers_on_calico_networks_are_dockers_to_change(proxied):
    a, b = proxied
    a.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico-ipam", "net1")
    a.docker("run", "-d", "--name", "onnet", "--net", "net1", IMAGE, "sleep", "3600")
    run(b, "member", "CALICO_IP=auto", "CALICO_PROFILE=extra")
    netip = inspect(a, "onnet")["NetworkSettings"]["Networks"]["net1"]["IPAddress"]
    member = ip_of(b, "member")
    assert not pings(b, "member", netip) and not pings(a, "onnet", member)

    added = a.calicoctl("container", "add", "onnet", "auto")
    assert (added.returncode, added.stderr.strip()) == (
        1, "onnet is on Calico Docker networks, which Docker manages; use 'docker network "
           "connect' instead.")
    removed = a.calicoctl("container", "remove", "onnet")
    assert "use 'docker network disconnect' instead." in removed.stderr
    ip_add = a.calicoctl("container", "onnet", "ip", "add", "10.20.97.1")
    assert ip_add.stderr.strip() == ("The interface of onnet is configured by docker; change "
                                     "its addresses through docker.")
    # Its endpoint on the network joins a profile like any other: it carries
    # extra's tag now, so extra's members let it in. The other way, net1's
    # rules come first and their catch-all deny is final (as in the original
    # system: profiles are not a union).
    assert ok(a.calicoctl("profile", "extra", "member", "add", "onnet")) == \
        "Added onnet to extra\n"
    reaches(a, "onnet", member)
    assert not pings(b, "member", netip)


PROBE = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    sys.exit(f"connect: {exc.strerror}")
sock.sendall(b"POST /calico.endpoint.v1.EndpointService/ListEndpoints HTTP/1.1\\r\\n"
             b"Host: x\\r\\nConnection: close\\r\\nContent-Length: 2\\r\\n\\r\\n{}")
data = b""
while True:     # the head and the body may come in separate reads: up to the close
    chunk = sock.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\\r\\n\\r\\n")
print(head.split(b"\\r\\n")[0].decode())
print(body.decode())
"""


def as_nobody(path: str, capability: str = "") -> subprocess.CompletedProcess:
    """The probe as user nobody (the system's python: the venv is under /root),
    with one capability of root's, if given, that lets it past file modes."""
    caps = [f"--inh-caps=+{capability}", f"--ambient-caps=+{capability}"] if capability else []
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           *caps, "/usr/bin/python3", "-c", PROBE, path],
                          capture_output=True, text=True, timeout=30)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sockets_and_state_folder_are_root_only_whatever_the_umask(lab, pools, tmp_path, etcd):
    old = os.umask(0)
    try:
        host = lab.add_host("h1", node=True, docker=True)
        assert "The Calico Docker proxy serves" in ok(switch(host, True, tmp_path))
        policy_sock = tmp_path / "cluster-policy.sock"
        service = launch.spawn([sys.executable, "-m", "services.policy",
                                f"--listen=unix:{policy_sock}", f"--etcd-endpoints={etcd}"],
                               tmp_path / "policy.log", cwd=ROOT)
    finally:
        os.umask(old)
    try:
        launch.wait_until("the policy service", lambda: check_health(f"unix:{policy_sock}"),
                          service, tmp_path / "policy.log")
        paths = host.paths
        wait_for("BIRD's socket made private", lambda: mode(paths.bird_ctl) == 0o600)
        plugin = host.engine.plugin_dir
        assert mode(paths.dir) == 0o700
        sockets = {"endpoint": paths.endpoint_socket,
                   "json": paths.endpoint_socket.with_name("endpoint.json.sock"),
                   "bird": paths.bird_ctl, "plugin": plugin / "calico.sock",
                   "plugin link": plugin / "calico-ipam.sock",
                   "proxy": host.engine.sock, "policy service": policy_sock}
        # The proxy's socket also serves the group docker when the engine's does.
        proxy_mode, proxy_gid = socket_access(real_socket(str(host.engine.sock)))
        assert {name: oct(mode(path)) for name, path in sockets.items()} == \
            {name: oct(proxy_mode if name == "proxy" else 0o600) for name in sockets}
        assert all(os.stat(path).st_uid == 0 for path in sockets.values())
        if proxy_mode == 0o660:
            assert os.stat(host.engine.sock).st_gid == proxy_gid == grp.getgrnam("docker").gr_gid
        # A user who is not root: stopped by the socket's mode (this capability
        # takes it through the folders, not past the socket)...
        json_sock = str(sockets["json"])
        refused = as_nobody(json_sock, "dac_read_search")
        assert refused.stderr.strip() == "connect: Permission denied", refused
        # ...and by the gateway itself when past the mode: 403, one line of JSON.
        answered = as_nobody(json_sock, "dac_override")
        status_line, body = answered.stdout.splitlines()
        assert status_line == "HTTP/1.1 403 Forbidden", answered
        assert json.loads(body) == {"code": "PERMISSION_DENIED", "message": "Only root may "
                                    "call the endpoint service; this process runs as uid "
                                    "65534."}
    finally:
        launch.stop_pid(service.pid)
        if os.path.exists(real_socket(str(host.engine.sock))):
            switch(host, False, tmp_path)
