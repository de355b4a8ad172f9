"""The Docker plugin killed in CreateEndpoint (the endpoint made, Docker not
answered): once the node runs again, Docker's own clean-up reaches the
plugin, and nothing stays behind (no endpoint, no address), and the same
container runs on the network."""

import subprocess

from tests.system.helpers import allocated, wait_for
from tests.system.test_docker_plugin import network, run
from tools.docker_engine import IMAGE
from tools.dockerd import docker_cli

FAILPOINT = "docker-create-endpoint"


def test_plugin_killed_in_create_endpoint(lab, pools, ipam_client):
    host = lab.add_host("dp", node=True, docker=True)
    network(host, "net")
    host.stop_node()
    host.start_calico_node(failpoints=FAILPOINT)
    engine = host._engine()
    hung = subprocess.Popen([docker_cli(), "-H", engine.url, "run", "-d", "--name", "c1",
                             "--net", "net", IMAGE, "sleep", "3600"], env=engine.client_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the failpoint", lambda: f"failpoint {FAILPOINT} reached" in
                 host.paths.log("docker-plugin").read_text())
        host.crash_node()
        host.start_calico_node()
        hung.wait(timeout=60)
    finally:
        if hung.poll() is None:
            hung.kill()
            hung.wait()
    host.docker("rm", "-f", "c1", check=False)
    wait_for("nothing left behind", lambda: allocated(ipam_client) == 0 and
             "docker" not in host.calicoctl("container", "show").stdout, timeout=60)
    assert run(host, "c2", "net").startswith("10.20.")
