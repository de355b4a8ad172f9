"""Starting and stopping the local processes the stack and the tests need.

Processes are started in their own session with output to a log file and are
stopped by the PID we recorded, never by name.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from calicopy import config
from calicopy.datastore.etcd import EtcdStore
from calicopy.datastore.store import DatastoreUnavailable
from calicopy.rpc import check_health
from tools import processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], log: Path, env: dict | None = None,
          cwd: Path | None = None, drop_env: str = "") -> subprocess.Popen:
    """``argv`` in a session of its own, output to ``log``, with our
    environment plus ``env`` (less the variables starting with ``drop_env``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not (drop_env and k.startswith(drop_env))}
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**environ, **(env or {})}, cwd=cwd)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; quiet if it is already gone."""
    processes.stop(pid, timeout)
    try:
        os.waitpid(pid, 0)      # reap it if it was our child
    except ChildProcessError:
        pass


def wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen | None,
               log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}:\n"
                               + processes.tail(log))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {log}:\n"
                               + processes.tail(log))
        time.sleep(0.1)


def etcd_ready(client: str, tls=None) -> bool:
    """Whether the etcd at ``client`` (an ETCD_ENDPOINTS value) answers and
    has a leader."""
    store = EtcdStore(config.parse_endpoints(client), timeout=1.0, tls=tls)
    try:
        store.check()
        return True
    except DatastoreUnavailable:
        return False
    finally:
        store.close()


def etcd_unix_endpoint(data_dir: Path, client_port: int, tls: bool = False) -> str:
    """The unix socket ``start_etcd`` also listens on, as an ETCD_ENDPOINTS entry.

    Processes in other network namespaces (simulated hosts) reach etcd
    through it without any IP route to this namespace. etcd names the socket
    file after the URL's host:port, in its working directory.
    """
    return f"{'unixs' if tls else 'unix'}:{data_dir.parent}/localhost:{client_port}"


#: How long etcd keeps history: auto-compaction, everywhere we start etcd
#: (here and docker-compose.yml), so its space stays bounded.
COMPACTION = ["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"]


def etcd_argv(name: str, data_dir: Path, client_port: int, peer_port: int,
              cluster: dict[str, int], tls=None) -> list[str]:
    """One member on loopback (client and peer ports) and a unix socket in
    its working directory; ``cluster`` maps every member's name to its peer
    port. With ``tls`` (the members' certificate, calicopy.tls.TlsFiles)
    clients must present a certificate of the same CA (its common name their
    etcd user), and peers talk TLS with certificates of ``tls``'s identity
    only."""
    scheme = "https" if tls else "http"
    client = f"{scheme}://127.0.0.1:{client_port}"
    peers = {member: f"{scheme}://127.0.0.1:{port}" for member, port in cluster.items()}
    listen = f"{client},{'unixs' if tls else 'unix'}://localhost:{client_port}"
    argv = ["etcd", "--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", listen, "--advertise-client-urls", client,
            "--listen-peer-urls", peers[name], "--initial-advertise-peer-urls", peers[name],
            "--initial-cluster", ",".join(f"{m}={url}" for m, url in peers.items()),
            "--initial-cluster-token", f"calico-py-{next(iter(cluster.values()))}",
            *COMPACTION]
    if len(cluster) > 1:
        argv += ["--pre-vote"]          # a member coming back does not depose the leader
    if tls is not None:
        argv += ["--cert-file", str(tls.cert), "--key-file", str(tls.key),
                 "--trusted-ca-file", str(tls.ca), "--client-cert-auth",
                 "--peer-cert-file", str(tls.cert), "--peer-key-file", str(tls.key),
                 "--peer-trusted-ca-file", str(tls.ca), "--peer-client-cert-auth",
                 "--peer-cert-allowed-cn", tls.identity]
    return argv


def _spawn_etcd(argv: list[str], data_dir: Path, log: Path) -> subprocess.Popen:
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # etcd takes ETCD_* variables as flags: ours (client files) would clash.
    return spawn(argv, log, cwd=data_dir.parent, drop_env="ETCD_")


def enable_auth(endpoints: str, admin) -> None:
    """etcd's authentication on, with calico-py's users and roles (as admin)."""
    from calicopy.datastore import etcd_auth
    store = EtcdStore(config.parse_endpoints(endpoints), tls=admin)
    try:
        etcd_auth.enable(store)
    finally:
        store.close()


def start_etcd(data_dir: Path, client_port: int, peer_port: int, log: Path, tls=None,
               admin=None) -> subprocess.Popen:
    """A one-member etcd on loopback (and a unix socket next to ``data_dir``).
    With ``tls`` (its server certificate, calicopy.tls.TlsFiles) clients must
    present a certificate signed by the same CA, whose common name is their
    etcd user; with ``admin`` too (the admin certificate), etcd's
    authentication is switched on with calico-py's users and roles
    (calicopy.datastore.etcd_auth), admin being root. History is compacted
    every hour (its space is bounded)."""
    argv = etcd_argv("calico-py", data_dir, client_port, peer_port,
                     {"calico-py": peer_port}, tls)
    proc = _spawn_etcd(argv, data_dir, log)
    client = f"{'https' if tls else 'http'}://127.0.0.1:{client_port}"
    wait_until("etcd", lambda: etcd_ready(client, admin or tls), proc, log)
    if admin is not None:
        enable_auth(client, admin)
    return proc


@dataclasses.dataclass
class EtcdMember:
    name: str
    folder: Path            # its working directory: data, log, unix socket
    client_port: int
    peer_port: int
    tls: bool
    proc: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "etcd.log"

    @property
    def client(self) -> str:
        """Its client URL, an ETCD_ENDPOINTS entry."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def unix(self) -> str:
        """Its unix socket, as an ETCD_ENDPOINTS entry (for other namespaces)."""
        return etcd_unix_endpoint(self.data_dir, self.client_port, self.tls)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """``size`` etcd members on loopback, each in a folder of its own under
    ``folder`` (data, log, unix socket), peers talking TLS when ``tls`` is
    given; with ``admin`` too, etcd's authentication on. For tests and
    benchmarks: ``leader()`` finds the leader, ``kill()`` and ``restart()``
    a member (by the PID we started). ``client_ports`` fixes the members'
    client ports (default: free ones)."""

    def __init__(self, folder: Path, size: int = 3, tls=None, admin=None,
                 client_ports: list[int] | None = None):
        self.tls, self.admin = tls, admin
        ports = client_ports or [free_port() for _ in range(size)]
        self.members = [EtcdMember(f"etcd{i + 1}", folder / f"etcd{i + 1}", port, free_port(),
                                   tls is not None) for i, port in enumerate(ports)]
        self._cluster = {m.name: m.peer_port for m in self.members}
        try:
            for member in self.members:
                self._spawn(member)
            for member in self.members:
                self._wait(member)
            if admin is not None:
                enable_auth(self.endpoints, admin)
        except BaseException:
            self.stop()
            raise

    @property
    def endpoints(self) -> str:
        """Every member's client URL: an ETCD_ENDPOINTS value."""
        return ",".join(m.client for m in self.members)

    @property
    def unix_endpoints(self) -> str:
        """Every member's unix socket: an ETCD_ENDPOINTS value for processes in
        other network namespaces."""
        return ",".join(m.unix for m in self.members)

    def _spawn(self, member: EtcdMember) -> None:
        argv = etcd_argv(member.name, member.data_dir, member.client_port, member.peer_port,
                         self._cluster, self.tls)
        member.proc = _spawn_etcd(argv, member.data_dir, member.log)

    def _wait(self, member: EtcdMember, timeout: float = 30.0) -> None:
        wait_until(f"etcd member {member.name}",
                   lambda: etcd_ready(member.client, self.admin or self.tls),
                   member.proc, member.log, timeout)

    def status(self, member: EtcdMember) -> dict | None:
        """The member's own view (calicopy.datastore.etcd.EtcdStore.status),
        None if it does not answer or has no leader."""
        if not member.running:
            return None
        store = EtcdStore([config.parse_endpoint(member.client)], timeout=1.0,
                          tls=self.admin or self.tls)
        try:
            return store.status()
        except DatastoreUnavailable:
            return None
        finally:
            store.close()

    def leader(self, timeout: float = 30.0) -> EtcdMember:
        """The member that is leader, once the running members agree on it."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {m.name: self.status(m) for m in self.members if m.running}
            leaders = {s["leader"] for s in seen.values() if s}
            for member in self.members:
                s = seen.get(member.name)
                if s and leaders == {s["member"]}:
                    return member
            if time.monotonic() > deadline:
                raise RuntimeError(f"the etcd members do not agree on a leader: {seen}")
            time.sleep(0.05)

    def move_leader(self, to: EtcdMember) -> None:
        """Hand the leadership to ``to`` (etcd's MoveLeader, as admin)."""
        from pyetcd import etcdrpc
        leader = self.leader()
        if leader is to:
            return
        target = self.status(to)["member"]
        store = EtcdStore([config.parse_endpoint(leader.client)], tls=self.admin or self.tls)
        try:
            store.call("Maintenance", "MoveLeader", etcdrpc.MoveLeaderRequest(targetID=target))
        finally:
            store.close()
        deadline = time.monotonic() + 30
        while self.leader() is not to:
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not hand the leadership to {to.name}")
            time.sleep(0.05)

    def kill(self, member: EtcdMember) -> None:
        """SIGKILL, as a crash would."""
        if member.running:
            member.proc.kill()
            member.proc.wait()

    def restart(self, member: EtcdMember) -> None:
        """Start a stopped member again on its data; returns once it has a leader."""
        # A killed etcd leaves its unix socket behind, and will not bind over it.
        Path(member.unix.split(":", 1)[1]).unlink(missing_ok=True)
        self._spawn(member)
        self._wait(member)

    def stop(self) -> None:
        for member in self.members:
            if member.proc is not None:
                stop_pid(member.proc.pid)


def spawn_service(module: str, listen: str, etcd: str, log: Path, unix: str = "",
                  env: dict | None = None, netns: str = "", metrics: str = ""
                  ) -> subprocess.Popen:
    """A cluster service (``services.ipam``, ``services.bgp``...) on ``listen``
    (and on ``unix``, for simulated hosts), in network namespace ``netns``
    when given. ``env`` gives it its identity (CALICO_TLS_* and ETCD_*_FILE);
    ``metrics``, where it serves its metrics (else its default)."""
    addrs = ",".join(filter(None, [listen, unix]))
    argv = [sys.executable, "-m", module, f"--listen={addrs}", f"--etcd-endpoints={etcd}"]
    if metrics:
        argv.append(f"--metrics={metrics}")
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    return spawn(argv, log, env=env)


def start_service(module: str, listen: str, etcd: str, log: Path, unix: str = "",
                  env: dict | None = None, security=None, netns: str = "") -> subprocess.Popen:
    """``spawn_service``, returning once the service is healthy; ``security``
    is how we check its health."""
    proc = spawn_service(module, listen, etcd, log, unix, env, netns)
    probe = unix or listen
    wait_until(module, lambda: check_health(probe, security=security), proc, log)
    return proc
