"""High-availability benchmark (make bench): fail-over, and etcd's growth.

A 3-member etcd on loopback (TLS between members and to clients, etcd's
authentication on) and two IPAM replicas as their own processes; the client
is ``calicopy.rpc.Client`` given both replicas' addresses, as calicoctl and
the endpoint service use it, allocating one address per call in a loop.

1. Fail-over: 10 times, at a random moment of the loop, the etcd leader is
   killed (SIGKILL), and separately 10 times an IPAM replica: the time from
   the kill to the end of the next allocation that succeeds (p50, max), and
   the calls that failed meanwhile. The member or replica is started again
   between tries. Afterwards every allocation is checked to hold exactly one
   address (none lost, none doubled by a retry).
2. Growth: two simulated hosts running the whole node (`calicoctl node`:
   policy agent, endpoint service, BIRD and its renderer) over the same etcd.
   Idle: the revisions and database bytes they add over a real window of
   IDLE_SECONDS with BGP established, scaled to an hour. Churn: an hour of one
   workload added and removed every CHURN_EVERY seconds on a host is
   compressed into CHURN_CYCLES add/remove cycles run back to back through the
   endpoint service; the database's size before, after, and once that hour's
   history is compacted (what auto-compaction, which keeps an hour, does an
   hour later) and defragmented.
"""

from __future__ import annotations

import random
import sys
import threading
import time

from common import identity_env, identity_files, percentile, private_pki
from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import config, rpc
from calicopy.datastore.etcd import EtcdStore
from tools import launch
from tools.lab import Lab, Namespace

TRIES = 10
IDLE_SECONDS = 30
CHURN_EVERY = 12            # seconds between a host's workload adds, in the hour we compress
CHURN_CYCLES = 3600 // CHURN_EVERY


class Allocator:
    """Allocations in a loop from a thread: (started, ended, ok) per call."""

    def __init__(self, client: rpc.Client):
        self.client, self.calls, self.handles = client, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            handle = f"bench-ha/{n}"
            n += 1
            started = time.monotonic()
            try:
                self.client.call("AutoAssign", ipam_pb2.AutoAssignRequest(
                    num_ipv4=1, handle_id=handle, hostname="bench-ha"), timeout=15)
                ok = True
                self.handles.append(handle)
            except Exception:         # counted; the loop goes on, as a scheduler would
                ok = False
            self.calls.append((started, time.monotonic(), ok))

    def recovered(self, killed: float, timeout: float = 30) -> tuple[float, int]:
        """(seconds from ``killed`` to the end of the first successful call
        started after it, calls that failed since)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = [c for c in self.calls if c[0] >= killed and c[2]]
            if after:
                failed = sum(1 for c in self.calls if c[1] >= killed and not c[2])
                return after[0][1] - killed, failed
            time.sleep(0.01)
        raise RuntimeError(f"no allocation succeeded within {timeout}s of the kill")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def failover(tmp, pki, cluster: launch.EtcdCluster) -> dict:
    addrs = [f"127.0.0.1:{launch.free_port()}" for _ in range(2)]
    ipam_env = identity_env(pki, "service:ipam")
    replicas = [launch.start_service("services.ipam", a, cluster.endpoints,
                                     tmp / f"ipam{i}.log", env=ipam_env)
                for i, a in enumerate(addrs)]
    client = rpc.Client("IPAM service", addrs, ipam_pb2_grpc.IpamServiceStub, 15)
    client.call("CreatePool", ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(
        cidr="10.150.0.0/16")))
    loop = Allocator(client)
    results = {"etcd leader": [], "IPAM replica": []}
    try:
        for n in range(TRIES):
            time.sleep(random.uniform(0.2, 0.8))      # a random moment of the loop
            member = cluster.leader()
            killed = time.monotonic()
            cluster.kill(member)
            results["etcd leader"].append(loop.recovered(killed))
            cluster.restart(member)
            cluster.leader()
        for n in range(TRIES):
            time.sleep(random.uniform(0.2, 0.8))
            i = n % 2
            killed = time.monotonic()
            replicas[i].kill()
            replicas[i].wait()
            results["IPAM replica"].append(loop.recovered(killed))
            replicas[i] = launch.start_service("services.ipam", addrs[i], cluster.endpoints,
                                               tmp / f"ipam{i}.log", env=ipam_env)
    finally:
        loop.close()
        held = [len(client.call("ListHandleAllocations", ipam_pb2.ListHandleAllocationsRequest(
            handle_id=h)).allocations) for h in loop.handles]
        check = client.call("CheckConsistency", ipam_pb2.CheckConsistencyRequest())
        client.close()
        for proc in replicas:
            launch.stop_pid(proc.pid)
    results["allocations"] = len(held)
    results["exactly one each"] = all(h == 1 for h in held)
    results["consistent"] = not list(check.problems)
    return results


def _status(store: EtcdStore) -> dict:
    return store.status()


def growth(tmp, pki, cluster: launch.EtcdCluster) -> dict:
    store = EtcdStore(config.parse_endpoints(cluster.endpoints),
                      tls=identity_files(pki, "admin"))
    Lab.remove_leftovers("benchha")
    lab = Lab(tmp / "lab", cluster.unix_endpoints, pki, prefix="benchha")
    out = {}
    try:
        with rpc.channel(lab.unix["ipam"]) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr="10.151.0.0/16")), timeout=10)
        hosts = [lab.add_host(f"ha{i}", node=True) for i in (1, 2)]
        deadline = time.monotonic() + 60
        while not all("Established" in h.calicoctl("status").stdout for h in hosts):
            if time.monotonic() > deadline:
                raise RuntimeError("no BGP session between the bench's hosts")
            time.sleep(0.5)
        time.sleep(3)         # the first reports after the sessions came up
        before = _status(store)
        time.sleep(IDLE_SECONDS)
        after = _status(store)
        out["idle revisions/hour"] = (after["revision"] - before["revision"]) \
            * 3600 / IDLE_SECONDS / len(hosts)
        out["idle bytes/hour"] = (after["db_size_in_use"] - before["db_size_in_use"]) \
            * 3600 / IDLE_SECONDS / len(hosts)

        ns = Namespace(lab, "benchha-w")
        host = hosts[0]
        channel = rpc.channel(host.endpoint_addr)
        stub = endpoint_pb2_grpc.EndpointServiceStub(channel)
        start = _status(store)
        began = time.monotonic()
        for n in range(CHURN_CYCLES):
            stub.AddEndpoint(endpoint_pb2.AddEndpointRequest(
                orchestrator="bench", workload_id=f"w{n}", netns_path=ns.path, auto_ipv4=1),
                timeout=30)
            stub.RemoveEndpoint(endpoint_pb2.RemoveEndpointRequest(
                orchestrator="bench", workload_id=f"w{n}"), timeout=30)
        out["churn seconds"] = time.monotonic() - began
        channel.close()
        end = _status(store)
        out["churn revisions/cycle"] = (end["revision"] - start["revision"]) / CHURN_CYCLES
        out["size before churn"] = start["db_size"]
        out["size after churn hour"] = end["db_size"]
        out["in use after churn hour"] = end["db_size_in_use"]
        compact_and_defrag(cluster, pki, end["revision"])
        done = max((cluster.status(m) for m in cluster.members), key=lambda s: s["db_size"])
        out["size after compaction"] = done["db_size"]
        out["in use after compaction"] = done["db_size_in_use"]
    finally:
        lab.close()
        store.close()
    return out


def compact_and_defrag(cluster: launch.EtcdCluster, pki, revision: int) -> None:
    """What auto-compaction does once the hour has passed, then the periodic
    defragmentation the README describes, member by member."""
    from pyetcd import etcdrpc
    admin = identity_files(pki, "admin")
    for i, member in enumerate(cluster.members):
        store = EtcdStore([config.parse_endpoint(member.client)], tls=admin)
        try:
            client = store._live
            if i == 0:
                client.kvstub.Compact(etcdrpc.CompactionRequest(revision=revision,
                                                                physical=True), 30,
                                      credentials=client.call_credentials)
            client.maintenancestub.Defragment(etcdrpc.DefragmentRequest(), 60,
                                              credentials=client.call_credentials)
        finally:
            store.close()


def main() -> int:
    with private_pki("ha") as (tmp, pki):
        cluster = launch.EtcdCluster(tmp / "etcd", 3, tls=identity_files(pki, "service:etcd"),
                                     admin=identity_files(pki, "admin"))
        try:
            fo = failover(tmp, pki, cluster)
            gr = growth(tmp, pki, cluster)
        finally:
            cluster.stop()

    print("Fail-over: a 3-member etcd and two IPAM replicas, allocations in a loop")
    print(f"{'killed':<14} {'tries':>6} {'p50 s':>7} {'max s':>7} {'failed calls':>13}")
    for what in ("etcd leader", "IPAM replica"):
        times = [t for t, _ in fo[what]]
        print(f"{what:<14} {len(times):>6} {percentile(times, 50):>7.2f} {max(times):>7.2f} "
              f"{sum(f for _, f in fo[what]):>13}")
    print("  (from the kill to the end of the next successful allocation; aim < 2 s; an "
          "AutoAssign in flight on a killed replica fails: not being idempotent, it is not "
          "retried)")
    print(f"  {fo['allocations']} allocations, each holding exactly one address: "
          f"{fo['exactly one each']}; ipam check clean: {fo['consistent']}")
    print("etcd growth, two simulated hosts running the whole node")
    print(f"  idle (BGP established): {gr['idle revisions/hour']:.0f} revisions and "
          f"{gr['idle bytes/hour'] / 1024:.0f} KiB in use per node per hour "
          f"(measured over {IDLE_SECONDS} s, scaled; aim: 0, flat)")
    print(f"  churn: an hour of one workload added and removed every {CHURN_EVERY} s on a "
          f"host, compressed into {CHURN_CYCLES} cycles back to back "
          f"({gr['churn seconds']:.0f} s): {gr['churn revisions/cycle']:.1f} revisions per "
          f"cycle")
    mib = 1024 * 1024
    print(f"  database size: {gr['size before churn'] / mib:.2f} MiB before, "
          f"{gr['size after churn hour'] / mib:.2f} MiB after the hour "
          f"({gr['in use after churn hour'] / mib:.2f} MiB in use), "
          f"{gr['size after compaction'] / mib:.2f} MiB "
          f"({gr['in use after compaction'] / mib:.2f} MiB in use) once compacted and "
          f"defragmented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
