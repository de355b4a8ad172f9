"""Real Docker engines, one per simulated host (tools/docker_engine.py): each runs
containers from the imported busybox image, lives in its host's network
namespace, sees only its own host's plugin folder, and leaves nothing behind."""

import os
import subprocess
from pathlib import Path

from tools import docker_engine
from tools.lab import Lab

IMAGE = docker_engine.IMAGE


def processes_naming(folder: Path) -> list[str]:
    """Command lines of live processes that mention ``folder``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(cmdline.replace("\0", " "))
    return found


def plugin_folder_seen_by(engine) -> list[str]:
    """/run/docker/plugins as the engine sees it, from inside its mount namespace."""
    return subprocess.run(["nsenter", "--mount", f"--target={engine.pid}", "ls",
                           "/run/docker/plugins"], capture_output=True, text=True,
                          check=True, timeout=10).stdout.split()


def test_two_hosts_each_with_its_own_engine(etcd_server, store, pki_dir, tmp_path):
    lab = Lab(tmp_path, etcd_server[1], pki_dir)
    engines = []
    try:
        a = lab.add_host("a", ipv6=False, docker=True)
        b = lab.add_host("b", ipv6=False, docker=True)
        engines = [a.engine, b.engine]
        for host, other in ((a, b), (b, a)):
            engine = host.engine
            assert host.env["DOCKER_HOST"] == f"unix://{engine.sock}"
            assert host.env["CALICO_DOCKER_PLUGIN_DIR"] == str(engine.plugin_dir)
            assert host.docker("run", "--rm", "--net", "none", IMAGE,
                               "echo", "hello").stdout == "hello\n"
            # The engine's network namespace is its host's.
            assert os.stat(f"/proc/{engine.pid}/ns/net").st_ino == os.stat(host.ns.path).st_ino
            addrs = host.docker("run", "--rm", "--net", "host", IMAGE,
                                "ip", "-4", "-o", "addr").stdout
            assert f"inet {host.ip}/24" in addrs and f"inet {other.ip}/" not in addrs
            info = host.docker("info", "-f", "{{.Driver}} {{.DockerRootDir}}").stdout.split()
            assert info == [docker_engine.storage_driver(), f"{engine.dir}/tmpfs/data"]

        # Containers of one engine are not the other's.
        a.docker("run", "-d", "--name", "sleeper", "--net", "none", IMAGE, "sleep", "600")
        assert b.docker("ps", "-aq").stdout == ""
        netns = a.container_netns("sleeper")
        assert os.stat(netns).st_ino != os.stat(a.ns.path).st_ino

        # Each engine sees its own host's plugin folder at /run/docker/plugins.
        (a.engine.plugin_dir / "probe").write_text("")
        assert plugin_folder_seen_by(a.engine) == ["probe"]
        assert plugin_folder_seen_by(b.engine) == []
        assert not Path("/run/docker/plugins/probe").exists()
    finally:
        lab.close()

    for engine in engines:
        assert engine.proc.returncode is not None
        assert processes_naming(engine.dir) == []
        assert not engine.dir.exists()
        assert engine.cgroups and not any(d.exists() for d in engine.cgroups)
