"""Many hosts allocating at the same moment never get the same address.

Eight client processes on four hostnames hammer two IPAM service instances
that share one etcd, until a /24 pool is exhausted.
"""

import json
import subprocess
import sys

from calico.ipam.v1 import ipam_pb2
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from tests.conftest import ROOT


def test_eight_processes_four_hosts_exhaust_a_slash_24(store, ipam_client, ipam_addr, calicoctl,
                                                      service_security):
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.50.0.0/24"))
    second, port = create_server("127.0.0.1:0", Ipam(store), security=service_security("ipam"))
    second.start()
    try:
        addrs = [ipam_addr, f"127.0.0.1:{port}"]
        procs = [subprocess.Popen(
            [sys.executable, "-m", "tools.ipam_load", addrs[n % 2], f"host-{n % 4}", f"w{n}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            for n in range(8)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:   # start them all at once
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    finally:
        second.stop(grace=None).wait()

    ips = [ip for r in results for ip in r["ips"]]
    assert len(ips) == 256
    assert len(set(ips)) == 256
    assert all(r["final"] == "RESOURCE_EXHAUSTED" for r in results)

    # The runs overlapped: this was a race, not eight turns.
    assert max(r["started"] for r in results) < min(r["finished"] for r in results)
    usage = ipam_client.get_usage()
    assert usage.pools[0].allocated == 256
    assert {h.host for h in usage.hosts} == {f"host-{n}" for n in range(4)}
    # Everything they got is consistent: blocks, affinities, handles.
    check = calicoctl("ipam", "check")
    assert check.returncode == 0 and "no problems found" in check.stdout, check.stdout

    for n, r in enumerate(results):
        for i in range(len(r["ips"])):
            ipam_client.release_by_handle(handle_id=f"w{n}-{i}")
    check = calicoctl("ipam", "check")
    assert check.returncode == 0 and "no problems found" in check.stdout
    assert ipam_client.get_usage().pools[0].allocated == 0
    assert "| 10.50.0.0/24 | 256       | 0         |" in calicoctl("ipam", "show").stdout
