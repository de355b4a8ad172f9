"""The IPAM service's garbage collector, run by the service process with its
flags (--gc-interval, --gc-grace), against real etcd."""

import subprocess
import sys

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.bgp import Node
from calicopy.model.endpoint import ACTIVE, Endpoint, endpoint_id
from services.ipam.allocator import Ipam
from tests.conftest import ROOT
from tests.integration.ipam_process import ipam_process, wait_for, wait_for_log


def claim(ipam, workload, node="node-1"):
    """An address as the endpoint service claims it for workload ``workload``."""
    ep_id = endpoint_id(node, "netns", workload, "eth0")
    ip = ipam.auto_assign(1, 0, f"{node}/netns/{workload}", node,
                          {"node": node, "endpoint": ep_id, "interface": "eth0"})[0][0]
    return ip, Endpoint(ep_id, node, "netns", workload, "eth0", f"/var/run/netns/{workload}",
                        ACTIVE, ipv4_nets=[f"{ip}/32"])


@pytest.fixture
def orphan_and_owned(store):
    ipam = Ipam(store)
    ipam.create_pool("10.85.0.0/24")
    store.commit(Txn().create(keys.node("node-1"), Node("node-1", "172.30.0.1").to_json()))
    orphan, _ = claim(ipam, "gone")                 # its record never made it (or went)
    owned, ep = claim(ipam, "live")
    store.commit(Txn().create(keys.endpoint("node-1", "netns", "live", ep.endpoint_id),
                              ep.to_json()))
    return ipam, orphan, owned


def test_an_orphan_is_released_after_the_grace_period(etcd, pki_dir, tmp_path,
                                                      orphan_and_owned):
    ipam, orphan, owned = orphan_and_owned
    log = tmp_path / "ipam.log"
    with ipam_process(etcd, pki_dir, log, "--gc-interval=0.2", "--gc-grace=0.5"):
        wait_for("the orphan's release", lambda: not ipam.get_allocation(orphan)["allocated"])
    assert ipam.get_allocation(owned)["allocated"]
    assert f"released {orphan} (handle node-1/netns/gone)" in log.read_text()
    assert ipam.check()[0] == []


def test_no_orphan_is_released_within_the_grace_period(etcd, pki_dir, tmp_path,
                                                       orphan_and_owned):
    ipam, orphan, owned = orphan_and_owned
    log = tmp_path / "ipam.log"
    with ipam_process(etcd, pki_dir, log, "--gc-interval=0.2", "--gc-grace=3600"):
        wait_for_log(log, "garbage collection: 1 allocation(s) without an owner", count=4)
        assert ipam.get_allocation(orphan)["allocated"]
    assert f"released {orphan}" not in log.read_text()


def test_an_interval_of_zero_turns_collection_off(etcd, pki_dir, tmp_path):
    log = tmp_path / "ipam.log"
    with ipam_process(etcd, pki_dir, log, "--gc-interval=0"):
        wait_for_log(log, "listening on")
    assert "garbage collection off (--gc-interval=0)" in log.read_text()


@pytest.mark.parametrize("flag, message", [
    ("--gc-interval=soon", "Invalid --gc-interval 'soon': give a number of seconds "
                           "(0 turns garbage collection off)."),
    ("--gc-interval=-1", "Invalid --gc-interval '-1': give a number of seconds "
                         "(0 turns garbage collection off)."),
    ("--gc-grace=-5", "Invalid --gc-grace '-5': give a number of seconds, 0 or more."),
])
def test_bad_gc_flags_are_refused(flag, message):
    result = subprocess.run([sys.executable, "-m", "services.ipam", flag], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (1, message + "\n")


def test_the_service_describes_its_gc_flags():
    result = subprocess.run([sys.executable, "-m", "services.ipam", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "[--gc-interval=<SECONDS>] [--gc-grace=<SECONDS>]" in result.stdout
    assert "gone [default: 60]. 0 turns garbage" in result.stdout
    assert "[default: 300]." in result.stdout
