"""`make up` / `make down`: a local etcd and the cluster services in the background.

Everything runs with TLS and authorisation on: `up` makes a CA and the
certificates it needs in the certificate folder (CALICO_PKI_DIR, default
/etc/calico-py/pki) unless they are there: admin (calicoctl finds it there),
service:ipam, service:policy, service:bgp and service:etcd. etcd serves
https on loopback (and a unixs socket for simulated hosts) with
client-certificate authentication and its own users and roles; each service
serves mutual TLS on its TCP address (and a root-only unix socket).

etcd runs as ETCD_MEMBERS members (1, the default, or 3): with 3, on the
client ports ETCD_ENDPOINTS lists, or, when it names one, that port and the
same plus 20000 and 30000 (2379, 22379, 32379), peers talking TLS. Each
service runs as two replicas: on the addresses CALICO_*_ADDR lists, or, when
it names one, that one and the same port plus 10 (IPAM 50051 and 50061).
`up` prints, and writes to $STATE_DIR/client.env, the ETCD_ENDPOINTS and
CALICO_*_ADDR that name them all, for clients that fail over between them.

Pids and logs live under $STATE_DIR (default .state/). `up` is idempotent:
what already runs (its pid alive and its health check answering) is left alone;
it returns once every member has a leader and every replica answers its
health check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from calicopy import config, pki
from calicopy.config import EtcdEndpoint
from calicopy.rpc import check_health, describe_target
from calicopy.tls import Security, TlsFiles
from tools import launch

STATE = Path(os.environ.get("STATE_DIR", ".state")).resolve()

SERVICE_IDENTITIES = {"ipam": "service:ipam", "policy": "service:policy", "bgp": "service:bgp",
                      "etcd": "service:etcd"}
REPLICAS = 2
REPLICA_PORT_STEP = 10          # the second replica's port, from the first's
MEMBER_PORT_STEPS = (0, 20000, 30000)   # etcd's own convention for a local cluster


def unix_addr(service: str, replica: int = 1) -> str:
    """Where this host's processes may also reach a service (root only)."""
    return f"unix:{STATE}/{_name(service, replica)}.sock"


def _name(service: str, replica: int) -> str:
    return service if replica == 1 else f"{service}-{replica}"


def pki_dir() -> Path:
    return Path(config.PKI_DIR.resolve())


def identity(name: str) -> TlsFiles:
    """The certificate of ``name`` (admin, service:ipam...) in the certificate
    folder, made (with the CA) if missing."""
    folder = pki_dir()
    pki.ensure(folder, {name: []})
    return TlsFiles(pki.paths(folder, pki.CA_NAME)[0], *pki.paths(folder, name))


def identity_env(name: str) -> dict[str, str]:
    files = identity(name)
    return {"CALICO_TLS_CA_FILE": str(files.ca), "CALICO_TLS_CERT_FILE": str(files.cert),
            "CALICO_TLS_KEY_FILE": str(files.key), "ETCD_CA_CERT_FILE": str(files.ca),
            "ETCD_CERT_FILE": str(files.cert), "ETCD_KEY_FILE": str(files.key)}


def _pidfile(name: str) -> Path:
    return STATE / f"{name}.pid"


def _running(name: str) -> int | None:
    try:
        pid = int(_pidfile(name).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


SERVICES = [  # name, module, client address parameter
    ("ipam", "services.ipam", config.IPAM_ADDR),
    ("policy", "services.policy", config.POLICY_ADDR),
    ("bgp", "services.bgp", config.BGP_ADDR),
]


# etcd ---------------------------------------------------------------------------

def members_wanted() -> int:
    raw = os.environ.get("ETCD_MEMBERS", "1").strip() or "1"
    if raw not in ("1", "3"):
        raise config.ConfigError(f"Invalid ETCD_MEMBERS '{raw}': give 1 or 3.")
    return int(raw)


def _members(count: int) -> list[tuple[str, EtcdEndpoint]]:
    """(name, client URL) of each member: one is `etcd`, as it always was."""
    given = config.ETCD_ENDPOINTS.resolve()
    for e in given:
        if not e.tls or e.host not in ("127.0.0.1", "localhost"):
            raise RuntimeError(f"ETCD_ENDPOINTS names {e}: the local stack serves etcd "
                               "itself on https://127.0.0.1:<port>.")
    if count == 1:
        return [("etcd", given[0])]
    if len(given) == 1:
        base = given[0].port
        if base + MEMBER_PORT_STEPS[-1] > 65535:
            raise RuntimeError(f"ETCD_ENDPOINTS names port {base}: with ETCD_MEMBERS=3, name "
                               "the three members' URLs.")
        given = [EtcdEndpoint("https", "127.0.0.1", base + step) for step in MEMBER_PORT_STEPS]
    if len(given) != count:
        raise RuntimeError(f"ETCD_ENDPOINTS names {len(given)} members; ETCD_MEMBERS={count}.")
    return [(f"etcd{i + 1}", e) for i, e in enumerate(given)]


def _member_folder(name: str) -> Path:
    """A lone member keeps the layout it always had; a cluster's each have one."""
    return STATE if name == "etcd" else STATE / name


def _data_dir(name: str) -> Path:
    return STATE / "etcd-data" if name == "etcd" else STATE / name / "data"


def _peer_ports(members: list[tuple[str, EtcdEndpoint]]) -> dict[str, int]:
    """Each member's peer port: kept (a member's data remembers it) from the
    first start, in $STATE_DIR/etcd-peers.json."""
    path = STATE / "etcd-peers.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    ports = {name: known.get(name) or launch.free_port() for name, _ in members}
    path.write_text(json.dumps({**known, **ports}))
    return ports


def etcd_endpoints() -> str:
    """Every member's client URL (ETCD_ENDPOINTS for this host)."""
    return ",".join(str(e) for _, e in _members(members_wanted()))


def etcd_unix() -> str:
    """Every member's unix socket (TLS), for processes in other network namespaces."""
    return ",".join(launch.etcd_unix_endpoint(_data_dir(name), e.port, tls=True)
                    for name, e in _members(members_wanted()))


def _start_etcd(admin: TlsFiles) -> None:
    members = _members(members_wanted())
    others = [n for n in ("etcd", "etcd1", "etcd2", "etcd3")
              if _running(n) and n not in dict(members)]
    if others:
        raise RuntimeError(f"etcd runs as {len(others)} member(s) here already, not "
                           f"{len(members)}: run 'make down' first.")
    endpoints = ",".join(str(e) for _, e in members)
    if all(_running(name) for name, _ in members) and launch.etcd_ready(endpoints, admin):
        print(f"etcd            already running on {endpoints}")
        return
    peers = _peer_ports(members)
    cluster = {name: peers[name] for name, _ in members}
    tls = identity("service:etcd")
    started = []
    for name, e in members:
        if _running(name):
            continue
        folder = _member_folder(name)
        unix = Path(launch.etcd_unix_endpoint(_data_dir(name), e.port, tls=True)
                    .split(":", 1)[1])
        unix.unlink(missing_ok=True)        # left by a member that was killed
        argv = launch.etcd_argv(name if name != "etcd" else "calico-py", _data_dir(name),
                                e.port, peers[name],
                                {("calico-py" if n == "etcd" else n): p
                                 for n, p in cluster.items()}, tls)
        proc = launch.spawn(argv, folder / "etcd.log" if name != "etcd" else STATE / "etcd.log",
                            cwd=folder, drop_env="ETCD_")
        _pidfile(name).write_text(str(proc.pid))
        started.append((name, e, proc))
    for name, e, proc in started:
        log = _member_folder(name) / "etcd.log" if name != "etcd" else STATE / "etcd.log"
        launch.wait_until(f"etcd member {name}", lambda e=e: launch.etcd_ready(str(e), admin),
                          proc, log)
    if not all(_running(name) for name, _ in members) or \
            not launch.etcd_ready(endpoints, admin):
        raise RuntimeError(f"etcd does not answer on {endpoints}; see the logs in {STATE}")
    launch.enable_auth(endpoints, admin)
    what = "etcd" if len(members) == 1 else f"etcd ({len(members)} members, peers TLS)"
    print(f"{what:<15} started on {endpoints}, TLS and authentication on (pid "
          f"{', '.join(str(p.pid) for _, _, p in started)})")


# Services -----------------------------------------------------------------------

def replicas(param: config.Param) -> list[str]:
    """The replicas' addresses: as the parameter lists them, the second made
    from the first (its port plus REPLICA_PORT_STEP) when it names one."""
    addrs = param.resolve()
    if len(addrs) >= REPLICAS:
        return addrs[:REPLICAS]
    first = addrs[0]
    if first.startswith("unix:"):
        raise RuntimeError(f"{param.env[0]} names {first}: give the replicas' host:port "
                           "addresses, comma-separated.")
    host, _, port = first.rpartition(":")
    return [first] + [f"{host}:{int(port) + REPLICA_PORT_STEP * n}" for n in range(1, REPLICAS)]


def client_env() -> dict[str, str]:
    """ETCD_ENDPOINTS and CALICO_*_ADDR naming every member and replica."""
    env = {"ETCD_ENDPOINTS": etcd_endpoints()}
    for _, _, param in SERVICES:
        env[param.env[0]] = ",".join(replicas(param))
    return env


def _start_services(admin: Security) -> None:
    starting = []
    for name, module, param in SERVICES:
        for replica, addr in enumerate(replicas(param), 1):
            label = (f"{name} service" if replica == 1 else f"  replica {replica}").ljust(15)
            proc_name = _name(name, replica)
            if _running(proc_name) and check_health(addr, security=admin):
                print(f"{label} already running on {addr}")
                continue
            # Each replica its own metrics port: the service's, plus the step.
            port = config.METRICS_PORTS[name] + REPLICA_PORT_STEP * (replica - 1)
            metrics = f"127.0.0.1:{port}"
            proc = launch.spawn_service(module, addr, etcd_endpoints(),
                                        STATE / f"{proc_name}.log",
                                        unix=unix_addr(name, replica),
                                        env=identity_env(SERVICE_IDENTITIES[name]),
                                        metrics=metrics)
            _pidfile(proc_name).write_text(str(proc.pid))
            starting.append((label, addr, proc, proc_name, metrics))
    for label, addr, proc, proc_name, metrics in starting:
        launch.wait_until(proc_name, lambda addr=addr: check_health(addr, security=admin),
                          proc, STATE / f"{proc_name}.log")
        print(f"{label} started on {addr}, mutual TLS (pid {proc.pid}); metrics on "
              f"http://{metrics}/metrics")


def up() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE, 0o700)
    for name in ["admin"] + list(SERVICE_IDENTITIES.values()):
        identity(name)
    print(f"certificates    in {pki_dir()} (calicoctl presents admin.pem from there)")
    admin = Security(identity("admin"))
    _start_etcd(identity("admin"))
    _start_services(admin)
    env = client_env()
    (STATE / "client.env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    print(f"logs and pids in {STATE}")
    print(f"clients fail over between the members and replicas with (in {STATE}/client.env):")
    for k, v in env.items():
        print(f"  export {k}={describe_target(v)}")


def down() -> None:
    names = [_name(s[0], r) for s in reversed(SERVICES) for r in range(REPLICAS, 0, -1)]
    for name in names + ["etcd", "etcd3", "etcd2", "etcd1"]:
        pid = _running(name)
        if pid:
            launch.stop_pid(pid)
            print(f"stopped {name} (pid {pid})")
        _pidfile(name).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if argv[1:] == ["up"]:
        try:
            up()
        except (RuntimeError, config.ConfigError) as exc:
            print(f"make up failed: {exc}", file=sys.stderr)
            return 1
    elif argv[1:] == ["down"]:
        down()
    else:
        print("usage: python -m tools.stack up|down", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
