"""AutoAssign is idempotent: the same handle and request id get the same
addresses from any replica, even when both replicas serve the request at
once (a client failing over while the first attempt still runs). Real etcd,
two IPAM servers, and the calico-ipam CNI plugin as a runtime starts it."""

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from calico.ipam.v1 import ipam_pb2
from calicopy.datastore import keys
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from tests.conftest import ROOT, IpamClient


def test_a_request_gets_the_same_addresses_from_either_replica(store, ipam_client, calicoctl,
                                                                service_security):
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.90.0.0/24"))
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="fd90::/120"))
    second, port = create_server("127.0.0.1:0", Ipam(store), security=service_security("ipam"))
    second.start()
    other = IpamClient(f"127.0.0.1:{port}")
    try:
        request = dict(num_ipv4=1, num_ipv6=1, handle_id="node-1/netns/w1",
                       hostname="node-1", request_id="add-1")
        first = ipam_client.auto_assign(**request)
        again = other.auto_assign(**request)
        assert (again.ipv4, again.ipv6) == (first.ipv4, first.ipv6)

        # Twenty requests, each sent to both replicas at the same moment.
        answers: dict[int, list] = {n: [] for n in range(20)}

        def both(n):
            start = threading.Barrier(2)

            def send(client):
                start.wait()
                resp = client.auto_assign(num_ipv4=1, handle_id=f"node-1/netns/c{n}",
                                          hostname="node-1", request_id=f"add-{n}")
                answers[n].append(list(resp.ipv4))
            threads = [threading.Thread(target=send, args=(c,)) for c in (ipam_client, other)]
            [t.start() for t in threads]
            [t.join() for t in threads]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(both, range(20)))
    finally:
        other.channel.close()
        second.stop(grace=None).wait()
    assert all(len(a) == 2 and a[0] == a[1] and len(a[0]) == 1 for a in answers.values())
    every = [a[0][0] for a in answers.values()]
    assert len(set(every)) == 20
    assert sum(p.allocated for p in ipam_client.get_usage().pools) == 22
    check = calicoctl("ipam", "check")
    assert check.returncode == 0 and "no problems found" in check.stdout


def test_calico_ipam_claims_under_a_request_its_retries_repeat(store, ipam_addr, ipam_client):
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.91.0.0/24"))
    conf = {"cniVersion": "1.0.0", "name": "net1", "type": "calico-ipam",
            "ipam": {"type": "calico-ipam", "nodename": "node-1", "ipam_addr": ipam_addr}}
    env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
           "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}

    def add():
        result = subprocess.run([sys.executable, "-m", "cni.calico_ipam"], input=json.dumps(conf),
                                capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)["ips"]
    assert add() == add()
    handle = "node-1/cni-ipam/net1/c1/eth0"
    record = store.get(keys.handle(handle)).json()
    assert list(record["requests"]) == ["cni-add"]
    assert len(ipam_client.list_handle_allocations(handle_id=handle).allocations) == 1
