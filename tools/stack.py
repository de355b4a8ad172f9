"""`make up` / `make down`: a local etcd and the cluster services in the background.

Everything runs with TLS and authorisation on: `up` makes a CA and the
certificates it needs in the certificate folder (CALICO_PKI_DIR, default
/etc/calico-py/pki) unless they are there: admin (calicoctl finds it there),
service:ipam, service:policy, service:bgp and service:etcd. etcd serves
https on loopback (and a unixs socket for simulated hosts) with
client-certificate authentication and its own users and roles; each service
serves mutual TLS on its TCP address (and a root-only unix socket).

Pids and logs live under $STATE_DIR (default .state/). `up` is idempotent:
what already runs (its pid alive and its health check answering) is left alone;
it returns once every service answers its health check.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from calicopy import config, pki
from calicopy.rpc import check_health
from calicopy.tls import Security, TlsFiles
from tools import launch

STATE = Path(os.environ.get("STATE_DIR", ".state")).resolve()


SERVICE_IDENTITIES = {"ipam": "service:ipam", "policy": "service:policy", "bgp": "service:bgp",
                      "etcd": "service:etcd"}


def unix_addr(service: str) -> str:
    """Where this host's processes may also reach a service (root only)."""
    return f"unix:{STATE}/{service}.sock"


def etcd_unix() -> str:
    """etcd's unix socket (TLS), for processes in other network namespaces."""
    return launch.etcd_unix_endpoint(STATE / "etcd-data", _etcd().port, tls=True)


def _etcd():
    return config.ETCD_ENDPOINTS.resolve()[0]


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


def up() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE, 0o700)
    etcd = _etcd()
    if not etcd.tls or etcd.host not in ("127.0.0.1", "localhost"):
        raise RuntimeError(f"ETCD_ENDPOINTS names {etcd}: the local stack serves etcd itself "
                           "on https://127.0.0.1:<port>.")
    for name in ["admin"] + list(SERVICE_IDENTITIES.values()):
        identity(name)
    print(f"certificates    in {pki_dir()} (calicoctl presents admin.pem from there)")
    admin = Security(identity("admin"))

    if _running("etcd") and launch.etcd_ready(str(etcd), identity("admin")):
        print(f"etcd            already running on {etcd}")
    else:
        proc = launch.start_etcd(STATE / "etcd-data", etcd.port, launch.free_port(),
                                 STATE / "etcd.log", tls=identity("service:etcd"),
                                 admin=identity("admin"))
        _pidfile("etcd").write_text(str(proc.pid))
        print(f"etcd            started on {etcd}, TLS and authentication on (pid {proc.pid})")

    for name, module, param in SERVICES:
        addr = param.resolve()
        label = f"{name} service".ljust(15)
        if _running(name) and check_health(addr, security=admin):
            print(f"{label} already running on {addr}")
            continue
        proc = launch.start_service(module, addr, str(etcd), STATE / f"{name}.log",
                                    unix=unix_addr(name),
                                    env=identity_env(SERVICE_IDENTITIES[name]), security=admin)
        _pidfile(name).write_text(str(proc.pid))
        print(f"{label} started on {addr}, mutual TLS (pid {proc.pid})")
    print(f"logs and pids in {STATE}")


def down() -> None:
    for name in [s[0] for s in reversed(SERVICES)] + ["etcd"]:
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
