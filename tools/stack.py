"""`make up` / `make down`: a local etcd and the cluster services in the background.

Pids and logs live under $STATE_DIR (default .state/). `up` is idempotent:
what already runs (its pid alive and its health check answering) is left alone;
it returns once every service answers its health check.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from calicopy import config
from calicopy.rpc import check_health
from tools import launch

STATE = Path(os.environ.get("STATE_DIR", ".state")).resolve()


def unix_addr(service: str) -> str:
    """Where simulated hosts (network namespaces) reach a service."""
    return f"unix:{STATE}/{service}.sock"


def etcd_unix() -> str:
    _, port = config.ETCD_ENDPOINTS.resolve()[0]
    return launch.etcd_unix_endpoint(STATE / "etcd-data", port)


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
    (etcd_host, etcd_port), = config.ETCD_ENDPOINTS.resolve()[:1]

    if _running("etcd") and launch.etcd_ready(etcd_port):
        print(f"etcd          already running on {etcd_host}:{etcd_port}")
    else:
        proc = launch.start_etcd(STATE / "etcd-data", etcd_port, launch.free_port(),
                                 STATE / "etcd.log")
        _pidfile("etcd").write_text(str(proc.pid))
        print(f"etcd          started on {etcd_host}:{etcd_port} (pid {proc.pid})")

    for name, module, param in SERVICES:
        addr = param.resolve()
        label = f"{name} service".ljust(13)
        if _running(name) and check_health(addr):
            print(f"{label} already running on {addr}")
            continue
        proc = launch.start_service(module, addr, f"{etcd_host}:{etcd_port}",
                                    STATE / f"{name}.log", unix=unix_addr(name))
        _pidfile(name).write_text(str(proc.pid))
        print(f"{label} started on {addr} (pid {proc.pid})")
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
