"""BGP route propagation benchmark (make bench).

With 3 and with 10 simulated hosts running `calicoctl node`, in a full iBGP
mesh and with one route reflector (a plain BIRD): the time from an endpoint
add on one host to the workload's route being installed on every other host.
The pool uses /32 blocks, so every workload is a new block and a new route
(with /26 blocks only a host's first workload in a block needs one). Prints
p50 and max over the trials, and the number of BGP sessions.
"""

from __future__ import annotations

import socket
import sys
import time

from pyroute2 import IPRoute

from common import control_plane, percentile
from calico.bgp.v1 import bgp_pb2, bgp_pb2_grpc
from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import netns
from calicopy import rpc
from tools.lab import Lab, Namespace

TRIALS = 12
RR_INDEX = 250


def rr_conf(hosts) -> str:
    peers = "".join(f"""
protocol bgp c{i} {{
  local $ip as 64511;
  neighbor {h.ip} as 64511;
  rr client;
  direct;
  ipv4 {{ import all; export all; }};
}}
""" for i, h in enumerate(hosts))
    return "router id $ip;\nprotocol device {}\n" + peers


def established(host) -> int:
    return host.calicoctl("status").stdout.count("Established")


def has_route(ipr: IPRoute, ip: str) -> bool:
    for r in ipr.get_routes(family=socket.AF_INET, table=254):
        if r["proto"] == 12 and r.get_attr("RTA_DST") == ip and r["dst_len"] == 32:
            return True
    return False


def run(n: int, mode: str, plane) -> dict:
    prefix = f"bgpb{n}{mode[0]}"
    Lab.remove_leftovers(prefix)
    lab = Lab(plane.tmp / prefix, plane.etcd_unix, plane.pki, prefix=prefix)
    try:
        hosts = [lab.add_host(f"n{i}", node=True, ipv6=False) for i in range(n)]
        expected = n - 1
        if mode == "rr":
            hosts[0].calicoctl("bgp", "node-mesh", "off")
            rr = lab.add_router("rr", RR_INDEX, rr_conf(hosts))
            hosts[0].calicoctl("bgppeer", "rr", "add", rr.ip)
            expected = 1
        deadline = time.monotonic() + 60
        while any(established(h) < expected for h in hosts):
            if time.monotonic() > deadline:
                raise RuntimeError(f"BGP sessions did not come up ({n} hosts, {mode})")
            time.sleep(0.5)
        sessions = n * (n - 1) // 2 if mode == "mesh" else n
        stubs = [endpoint_pb2_grpc.EndpointServiceStub(rpc.channel(h.endpoint_addr))
                 for h in hosts]
        routers = [IPRoute(fileno=netns.netlink_socket(h.ns.path).detach()) for h in hosts]
        times = []
        for t in range(TRIALS):
            src = t % n
            ns = Namespace(lab, f"{prefix}-w{t}")
            start = time.perf_counter()
            ep = stubs[src].AddEndpoint(endpoint_pb2.AddEndpointRequest(
                orchestrator="bench", workload_id=ns.name, netns_path=ns.path, auto_ipv4=1),
                timeout=30).endpoint
            ip = ep.ipv4_nets[0].split("/")[0]
            waiting = [r for i, r in enumerate(routers) if i != src]
            while waiting:
                waiting = [r for r in waiting if not has_route(r, ip)]
                if time.perf_counter() - start > 30:
                    raise RuntimeError(f"route to {ip} not everywhere after 30s")
                time.sleep(0.005)
            times.append(time.perf_counter() - start)
        for r in routers:
            r.close()
        return {"hosts": n, "mode": mode, "sessions": sessions,
                "p50": percentile(times, 50) * 1000, "max": max(times) * 1000}
    finally:
        reset_bgp(lab.unix["bgp"])      # the next run starts from the default settings
        lab.close()


def reset_bgp(addr: str) -> None:
    with rpc.channel(addr) as ch:
        stub = bgp_pb2_grpc.BgpServiceStub(ch)
        stub.SetBgpConfig(bgp_pb2.SetBgpConfigRequest(node_mesh=True), timeout=10)
        for peer in stub.ListPeers(bgp_pb2.ListPeersRequest(), timeout=10).peers:
            stub.RemovePeer(bgp_pb2.RemovePeerRequest(
                ip=peer.ip, route_reflector=peer.route_reflector), timeout=10)


def main() -> int:
    rows = []
    with control_plane("bgp") as plane:
        with rpc.channel(plane.ipam_tcp) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr="10.150.0.0/16", block_size=32)), timeout=10)
        for n in (3, 10):
            for mode in ("mesh", "rr"):
                rows.append(run(n, mode, plane))

    print("Workload add -> its route installed on every other host (real BIRD, /32 blocks)")
    print(f"{'hosts':>6} {'topology':<16} {'sessions':>9} {'trials':>7} {'p50 ms':>8} "
          f"{'max ms':>8}")
    for r in rows:
        topo = "full mesh" if r["mode"] == "mesh" else "route reflector"
        print(f"{r['hosts']:>6} {topo:<16} {r['sessions']:>9} {TRIALS:>7} {r['p50']:>8.0f} "
              f"{r['max']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
