"""Killing the IPAM service at each of its failpoints loses nothing and hands
nothing out twice: after a restart, the client's retry of the same request
gets what the killed attempt committed (or new addresses, if it committed
none), the host still has one block, and the data is consistent. Real etcd,
the service as a process (CALICO_FAILPOINTS), SIGKILL."""

import ipaddress
import os
import signal

import grpc
import pytest

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import rpc
from calicopy.datastore import keys
from calicopy.model.ipam import PENDING
from services.ipam.allocator import Ipam
from tests.integration.ipam_process import ipam_process, wait_for_log

HANDLE = "node-1/netns/w1"
REQUEST = ipam_pb2.AutoAssignRequest(num_ipv4=1, handle_id=HANDLE, hostname="node-1",
                                     request_id="add-1")


@pytest.mark.parametrize("failpoint", ["ipam-claim-between-phases",
                                       "ipam-assign-before-commit",
                                       "ipam-assign-after-commit"])
def test_a_retry_after_a_crash_gets_what_the_crashed_attempt_committed(
        store, etcd, pki_dir, tmp_path, calicoctl, failpoint):
    ipam = Ipam(store)
    ipam.create_pool("10.95.0.0/24")
    log = tmp_path / "crashed.log"
    with ipam_process(etcd, pki_dir, log, env={"CALICO_FAILPOINTS": failpoint}) as (proc, addr):
        with rpc.channel(addr) as channel:
            pending = ipam_pb2_grpc.IpamServiceStub(channel).AutoAssign.future(REQUEST,
                                                                                timeout=60)
            wait_for_log(log, f"failpoint {failpoint} reached")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            with pytest.raises(grpc.RpcError):
                pending.result()
    committed = [a["ip"] for a in ipam.handle_allocations(HANDLE)]
    affinities = [kv.json()["state"] for kv in store.list(keys.AFFINITIES)]
    assert len(committed) == (1 if failpoint.endswith("after-commit") else 0)
    assert affinities == ([PENDING] if failpoint.endswith("phases") else ["confirmed"])

    with ipam_process(etcd, pki_dir, tmp_path / "restarted.log") as (_, addr):
        with rpc.channel(addr) as channel:
            stub = ipam_pb2_grpc.IpamServiceStub(channel)
            got = list(stub.AutoAssign(REQUEST, timeout=30).ipv4)
            assert list(stub.AutoAssign(REQUEST, timeout=30).ipv4) == got
            others = list(stub.AutoAssign(ipam_pb2.AutoAssignRequest(
                num_ipv4=3, handle_id="node-2/netns/w2", hostname="node-2"), timeout=30).ipv4)
    assert len(got) == 1 and (not committed or got == committed)
    assert len(set(got + others)) == 4
    assert sum(p["allocated"] for p in ipam.usage().pools) == 4
    usage = {h["host"]: h["blocks"] for h in ipam.usage().hosts}
    assert usage == {"node-1": 1, "node-2": 1}
    block = ipaddress.ip_network(f"{got[0]}/26", strict=False)
    assert store.get(keys.affinity("node-1", block)).json() == {"state": "confirmed"}
    check = calicoctl("ipam", "check")
    assert check.returncode == 0 and "no problems found" in check.stdout, check.stdout
