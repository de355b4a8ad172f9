"""A block claim interrupted between its two phases is recovered, and a new
host's concurrent first claims end in one block, on real etcd."""

import ipaddress
import threading
from concurrent.futures import ThreadPoolExecutor

from calico.ipam.v1 import ipam_pb2
from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.ipam import Block
from services.ipam.allocator import Ipam
from services.ipam.server import create_server
from tests.conftest import IpamClient

BLOCK = ipaddress.ip_network("10.60.0.0/26")


def all_addresses(ipam_client, hosts):
    got = []
    for n in range(1000):
        try:
            got += ipam_client.auto_assign(num_ipv4=1, handle_id=f"fill-{n}",
                                           hostname=hosts[n % len(hosts)]).ipv4
        except Exception as exc:
            assert exc.code().name == "RESOURCE_EXHAUSTED"
            return got
    raise AssertionError("pool never filled up")


def test_pending_claim_without_block_is_completed(store, ipam_client, calicoctl):
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.60.0.0/25"))
    # Phase 1 done, crash before phase 2: affinity pending, no block.
    assert store.commit(Txn().create(keys.affinity("host-a", BLOCK), {"state": "pending"}))
    check = calicoctl("ipam", "check")
    assert check.returncode == 1 and "pending affinity for block 10.60.0.0/26" in check.stdout

    ip = ipam_client.auto_assign(num_ipv4=1, handle_id="w", hostname="host-a").ipv4[0]
    assert ipaddress.ip_address(ip) in BLOCK
    assert store.get(keys.affinity("host-a", BLOCK)).json() == {"state": "confirmed"}
    assert calicoctl("ipam", "check").returncode == 0

    rest = all_addresses(ipam_client, ["host-a", "host-b", "host-c"])
    every = [ip] + rest
    assert len(every) == len(set(every)) == 128


def test_pending_claim_with_block_written_is_confirmed(store, ipam_client, calicoctl):
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.60.0.0/25"))
    # A claim that got as far as writing the block but not confirming.
    assert store.commit(
        Txn().create(keys.affinity("host-a", BLOCK), {"state": "pending"})
        .create(keys.block(BLOCK), Block.empty(BLOCK, "host-a").to_json()))
    ip = ipam_client.auto_assign(num_ipv4=1, handle_id="w", hostname="host-a").ipv4[0]
    assert ipaddress.ip_address(ip) in BLOCK
    # Another host does not get that block: it claims the other one.
    other = ipam_client.auto_assign(num_ipv4=1, handle_id="w2", hostname="host-b").ipv4[0]
    assert ipaddress.ip_address(other) not in BLOCK
    assert calicoctl("ipam", "check").returncode == 0
    every = [ip, other] + all_addresses(ipam_client, ["host-a", "host-b"])
    assert len(every) == len(set(every)) == 128


def test_a_new_hosts_first_allocations_through_two_replicas_claim_one_block(
        store, ipam_client, calicoctl, service_security):
    """Each new host gets its first two addresses at the same moment, one from
    each of two IPAM replicas: one block per host, not one per replica."""
    ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.61.0.0/16"))
    second, port = create_server("127.0.0.1:0", Ipam(store), security=service_security("ipam"))
    second.start()
    other = IpamClient(f"127.0.0.1:{port}")
    hosts = [f"new-{n}" for n in range(16)]
    try:
        def first_allocations(host):
            start = threading.Barrier(2)

            def allocate(client, n):
                start.wait()
                client.auto_assign(num_ipv4=1, handle_id=f"{host}/w{n}", hostname=host)
            threads = [threading.Thread(target=allocate, args=(c, n))
                       for n, c in enumerate((ipam_client, other))]
            [t.start() for t in threads]
            [t.join() for t in threads]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(first_allocations, hosts))
    finally:
        other.channel.close()
        second.stop(grace=None).wait()
    usage = ipam_client.get_usage()
    assert {h.host: (h.blocks, h.allocated) for h in usage.hosts} == \
        {host: (1, 2) for host in hosts}
    check = calicoctl("ipam", "check")
    assert check.returncode == 0 and "no problems found" in check.stdout, check.stdout
