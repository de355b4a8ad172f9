"""Cross-subnet throughput benchmark (make bench).

Three simulated hosts running `calicoctl node`: a1 and a2 on one underlay
subnet, b1 on another, joined by a router namespace (plain forwarding). TCP
throughput (iperf3, one stream) between workloads, against the same hosts'
own addresses:

- across the router, workloads through IP-in-IP (pool mode always) vs host to
  host (aim: ratio >= 0.9);
- on the same subnet, workloads without encapsulation (pool mode
  cross-subnet) vs host to host (aim: ratio >= 0.95).

Each figure is the median of RUNS runs of SECONDS seconds, workload and host
runs interleaved.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from common import control_plane
from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import rpc
from tools.lab import Lab, Namespace

POOL = "10.160.0.0/16"
RUNS, SECONDS = 5, 2
PORT = 5301


def iperf(server_ns: str, client_ns: str, ip: str) -> float:
    """Gbit/s received by one iperf3 run (server in one namespace, client in another)."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p",
                               str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):     # until it listens
            done = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", ip, "-p",
                                   str(PORT), "-t", str(SECONDS), "-J"], capture_output=True,
                                  text=True, timeout=SECONDS + 30)
            result = json.loads(done.stdout or "{}")
            received = result.get("end", {}).get("sum_received")
            if done.returncode == 0 and received:
                return received["bits_per_second"] / 1e9
            time.sleep(0.1)       # e.g. the server is not listening yet
        raise RuntimeError(f"iperf3 to {ip} failed: {result.get('error', done.stderr[-300:])}")
    finally:
        server.kill()
        server.wait()


def compare(workloads: tuple[str, str, str], hosts: tuple[str, str, str]) -> tuple[float, float]:
    """Median Gbit/s of workloads and of hosts, their runs interleaved so
    that a machine busy with something else weighs on both alike."""
    w, h = [], []
    for _ in range(RUNS):
        w.append(iperf(*workloads))
        h.append(iperf(*hosts))
    return statistics.median(w), statistics.median(h)


def workload(lab, host, name) -> tuple[str, str]:
    ns = Namespace(lab, f"{lab.prefix}-{name}")
    with rpc.channel(host.endpoint_addr) as ch:
        ep = endpoint_pb2_grpc.EndpointServiceStub(ch).AddEndpoint(
            endpoint_pb2.AddEndpointRequest(orchestrator="bench", workload_id=ns.name,
                                            netns_path=ns.path, auto_ipv4=1,
                                            profile_ids=["bench"]), timeout=30).endpoint
    return ns.name, ep.ipv4_nets[0].split("/")[0]


def route_dev(host, ip) -> str:
    return host.ns.run("ip", "route", "get", ip).stdout.split(" dev ")[1].split()[0]


def wait(what, condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.3)


def set_mode(plane, mode) -> None:
    with rpc.channel(plane.ipam_tcp) as ch:
        ipam_pb2_grpc.IpamServiceStub(ch).UpdatePool(ipam_pb2.UpdatePoolRequest(
            cidr=POOL, ipip_mode=mode), timeout=10)


def main() -> int:
    prefix = "xsb"
    Lab.remove_leftovers(prefix)
    with control_plane("xsubnet") as plane:
        with rpc.channel(plane.ipam_tcp) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr=POOL, ipip_mode=ipam_pb2.IPIP_MODE_ALWAYS)), timeout=10)
        lab = Lab(plane.tmp / prefix, plane.etcd_unix, plane.pki, prefix=prefix, subnets=2)
        try:
            with rpc.channel(lab.unix["policy"]) as ch:
                policy_pb2_grpc.PolicyServiceStub(ch).CreateProfile(
                    policy_pb2.CreateProfileRequest(name="bench"), timeout=10)
            a1 = lab.add_host("a1", node=True, ipv6=False)
            a2 = lab.add_host("a2", node=True, ipv6=False)
            b1 = lab.add_host("b1", node=True, ipv6=False, subnet=1)
            wa1, ip_a1 = workload(lab, a1, "wa1")
            wa2, ip_a2 = workload(lab, a2, "wa2")
            wb1, ip_b1 = workload(lab, b1, "wb1")
            wait("the IP-in-IP route", lambda: route_dev(a1, ip_b1) == "tunl0")
            wait("b1's workload", lambda: subprocess.run(
                ["ip", "netns", "exec", wa1, "ping", "-c1", "-W1", ip_b1],
                capture_output=True).returncode == 0)
            across, hosts_across = compare((wb1, wa1, ip_b1), (b1.ns.name, a1.ns.name, b1.ip))
            set_mode(plane, ipam_pb2.IPIP_MODE_CROSS_SUBNET)
            wait("a2's block natively", lambda: route_dev(a1, ip_a2) == "eth0")
            same, hosts_same = compare((wa2, wa1, ip_a2), (a2.ns.name, a1.ns.name, a2.ip))
        finally:
            lab.close()
    print("TCP throughput, one iperf3 stream (Gbit/s, median of "
          f"{RUNS} x {SECONDS}s; hosts on two subnets joined by a router)")
    print(f"{'path':<52} {'workloads':>10} {'hosts':>8} {'ratio':>7} {'aim':>6}")
    for path, w, h, aim in (("across the router, IP-in-IP (always)", across, hosts_across, 0.9),
                            ("same subnet, no encapsulation (cross-subnet)", same, hosts_same,
                             0.95)):
        print(f"{path:<52} {w:>10.2f} {h:>8.2f} {w / h:>7.2f} {aim:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
