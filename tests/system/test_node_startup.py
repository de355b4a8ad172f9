"""`calicoctl node` returns only when every part it started can serve: a
`docker run -e CALICO_IP=auto` at once after it works, every time (it failed
3-4 times in 5 with "The endpoint service ... cannot be reached ... No such
file or directory": the proxy's first call found no socket yet, and gRPC's
reconnection back-off then failed its next calls at once)."""

from pathlib import Path

from tests.cli import ok
from tests.system.test_docker_proxy import ip_of, run, switch

RUNS = 20
PS_NAMES = {"policy agent": "calico-policy", "endpoint service": "calico-endpoint",
            "bird renderer": "calico-renderer", "bird": "bird", "ipip": "calico-ipip",
            "docker plugin": "calico-dplugin", "docker proxy": "calico-dproxy"}


def test_docker_run_at_once_after_a_fresh_calicoctl_node(lab, pools, tmp_path):
    host = lab.add_host("fresh", node=True, docker=True)
    ok(switch(host, True, tmp_path))
    try:
        for i in range(RUNS):
            host.stop_node()                    # the supervisor and all it runs
            host.start_calico_node()            # a fresh start, which returns when ready
            name = f"w{i}"
            result = run(host, name, "CALICO_IP=auto", check=False)
            assert result.returncode == 0, f"run {i + 1} of {RUNS}: {result.stderr}"
            assert ip_of(host, name).startswith("10.20."), f"run {i + 1}"
            host.docker("rm", "-f", name)
        # What README promises `ps -e` shows for the processes the supervisor runs.
        names = {child: Path(f"/proc/{host.child_pid(child)}/comm").read_text().strip()
                 for child in PS_NAMES}
        assert names == PS_NAMES
    finally:
        switch(host, False, tmp_path)
