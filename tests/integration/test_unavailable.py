"""When the service or etcd is down, the user gets one clear line and exit 1."""

import shutil
import tempfile
from pathlib import Path

from calicopy.datastore.etcd import EtcdStore
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from tests.cli import calicoctl
from tools import launch


def test_service_not_running():
    addr = f"127.0.0.1:{launch.free_port()}"
    result = calicoctl("pool", "show", env={"CALICO_IPAM_ADDR": addr, "CALICO_RPC_TIMEOUT": "1"})
    assert result.returncode == 1
    assert result.stderr == (f"Could not reach the IPAM service at {addr} (set CALICO_IPAM_ADDR "
                             "to change it). Is it running? 'make up' starts it.\n")


def test_bad_service_address():
    result = calicoctl("pool", "show", env={"CALICO_IPAM_ADDR": "nowhere"})
    assert result.returncode == 1
    assert result.stderr == ("Invalid IPAM service address 'nowhere' (from environment variable "
                             "CALICO_IPAM_ADDR): 'nowhere' is not host:port\n")


def test_etcd_down_behind_a_running_service(service_security):
    tmp = Path(tempfile.mkdtemp(prefix="calico-test-etcd-down-"))
    port = launch.free_port()
    etcd = launch.start_etcd(tmp / "data", port, launch.free_port(), tmp / "etcd.log")
    store = EtcdStore([("127.0.0.1", port)], timeout=2)
    server, ipam_port = create_server("127.0.0.1:0", Ipam(store),
                                      security=service_security("ipam"))
    server.start()
    try:
        env = {"CALICO_IPAM_ADDR": f"127.0.0.1:{ipam_port}"}
        assert calicoctl("pool", "add", "10.70.0.0/24", env=env).returncode == 0
        launch.stop_pid(etcd.pid)
        result = calicoctl("pool", "show", env=env)
        assert result.returncode == 1
        assert result.stderr.startswith(f"Error accessing etcd (127.0.0.1:{port})")
        assert result.stderr.rstrip().endswith("Is etcd running?")
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        server.stop(grace=None).wait()
        store.close()
        launch.stop_pid(etcd.pid)
        shutil.rmtree(tmp, ignore_errors=True)
