"""Hosts on two subnets joined by a router that knows nothing of the pools:
multi-hop BGP (a route reflector and an upstream router on the other subnet),
IP-in-IP in its modes, the MTU rule, and policy on encapsulated traffic. Real
kernel, BIRD, etcd, iptables.

One lab for the module (tests run in order and build on each other's state):
h1, h2 on 172.30.0.0/24, h3 on 172.30.1.0/24, the router at .253 of each.
The underlay's MTU is 1520, so the workloads' default MTU with IP-in-IP is
1500 and a 1472-byte ping with DF set (a 1500-byte packet) fits.
"""

import socket
import struct

import pytest

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import rpc
from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from tests.cli import ok
from tests.system.conftest import POOL4
from tests.system.helpers import wait_for
from tools.lab import Lab, Workload, assert_connectivity

RR_INDEX, UPSTREAM_INDEX = 250, 251
CLIENTS = [("172.30.0.2", "multihop"), ("172.30.0.3", "multihop"), ("172.30.1.2", "direct")]
# BIRD learns the kernel's routes so next hops one router away resolve.
_IGP = """
router id $ip;
protocol device {}
protocol direct { ipv4; }
protocol kernel { learn; ipv4 { import all; export none; }; }
"""
RR_CONF = _IGP + "".join(f"""
protocol bgp client{i} {{
  local $ip as 64511;
  neighbor {ip} as 64511;
  rr client;
  {how};
  ipv4 {{ import all; export all; }};
}}
""" for i, (ip, how) in enumerate(CLIENTS))
UPSTREAM_CONF = _IGP + "".join(f"""
protocol bgp host{i} {{
  local $ip as 65000;
  neighbor {ip} as 64511;
  {how};
  ipv4 {{ import all; export none; }};
}}
""" for i, (ip, how) in enumerate(CLIENTS))


@pytest.fixture(scope="module")
def xlab(etcd_server, pki_dir, tmp_path_factory):
    store = EtcdStore.from_env(etcd_server[0])
    store.delete_prefix(keys.ROOT)
    lab = Lab(tmp_path_factory.mktemp("xsubnet"), etcd_server[1], pki_dir, subnets=2,
              mtu=1520)
    try:
        with rpc.channel(lab.unix["ipam"]) as ch:     # before any node: no default pools
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(
                ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr=POOL4)), timeout=10)
        with rpc.channel(lab.unix["policy"]) as ch:
            policy_pb2_grpc.PolicyServiceStub(ch).CreateProfile(
                policy_pb2.CreateProfileRequest(name="net"), timeout=10)
        lab.add_host("h1", node=True, ipv6=False)
        lab.add_host("h2", node=True, ipv6=False)
        lab.add_host("h3", node=True, ipv6=False, subnet=1)
        yield lab
    finally:
        lab.close()
        store.delete_prefix(keys.ROOT)
        store.close()


def hosts(lab):
    return lab.hosts["h1"], lab.hosts["h2"], lab.hosts["h3"]


def sessions(host):
    """calicoctl status's BGP rows: peer -> (type, state, info, last error)."""
    rows = {}
    for line in ok(host.calicoctl("status")).splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 6 and cells[0][0].isdigit():
            rows[cells[0]] = (cells[1], cells[2], cells[4], cells[5])
    return rows


def up(host, *peers):
    return all(sessions(host).get(p, ("", "", ""))[2] == "Established" for p in peers)


def route_dev(host, ip):
    return host.ns.run("ip", "route", "get", ip).stdout.split(" dev ")[1].split()[0]


def test_mesh_peers_across_the_router_are_multihop_and_come_up(xlab):
    h1, h2, h3 = hosts(xlab)
    wait_for("the mesh", lambda: up(h1, h2.ip, h3.ip) and up(h3, h1.ip, h2.ip), timeout=60)
    conf = h1.paths.bird_conf.read_text()
    near, far = conf.split(f"neighbor {h2.ip} ")[1], conf.split(f"neighbor {h3.ip} ")[1]
    assert near.split("}")[0].count("direct;") == 1 and "multihop" not in near.split("}")[0]
    assert "multihop;" in far.split("}")[0]


def test_route_reflector_on_the_other_subnet_without_ipip(xlab):
    h1, h2, h3 = hosts(xlab)
    ok(h1.calicoctl("bgp", "node-mesh", "off"))
    rr_ip = f"172.30.1.{RR_INDEX}"
    ok(h1.calicoctl("bgppeer", "rr", "add", rr_ip))
    # Nothing answers there yet: status says why the session is not up.
    wait_for("BIRD's error", lambda: sessions(h1).get(rr_ip, ("",) * 4)[3], timeout=60)
    typ, state, info, error = sessions(h1)[rr_ip]
    assert typ == "route reflector" and info != "Established" and error.startswith("Socket:")
    xlab.add_router("rr", RR_INDEX, RR_CONF, subnet=1)
    wait_for("sessions with the reflector", lambda: all(up(h, rr_ip) for h in (h1, h2, h3)),
             timeout=60)
    assert sessions(h1)[rr_ip][3] == ""
    w1, w2 = h1.add_workload("w1", profiles=("net",)), h2.add_workload("w2", profiles=("net",))
    w3 = h3.add_workload("w3", profiles=("net",))
    # Same subnet: routed natively. Across the router (which has no pool
    # routes): nothing gets through, though every session is up.
    assert_connectivity([(w1, w2.ip), (w2, w1.ip)],
                        blocked=[(w1, w3.ip), (w3, w1.ip), (w2, w3.ip)])
    assert route_dev(h1, w3.ip) == "eth0"


def test_ipip_always_reaches_across_the_router(xlab):
    h1, h2, h3 = hosts(xlab)
    w1, w2, w3 = h1.workloads["w1"], h2.workloads["w2"], h3.workloads["w3"]
    assert ok(h1.calicoctl("pool", "add", POOL4, "--ipip")) == \
        f"Updated pool {POOL4}: options now 'ipip=always'.\n"
    wait_for("w1 to reach w3", lambda: w1.ping(w3.ip), timeout=30)
    assert_connectivity([(w1, w3.ip), (w3, w1.ip), (w2, w3.ip), (w1, w2.ip)])
    assert route_dev(h1, w3.ip) == "tunl0" and route_dev(h1, w2.ip) == "tunl0"
    tunnel = h1.ns.run("ip", "-4", "-o", "addr", "show", "dev", "tunl0").stdout
    assert " 10.20." in tunnel and "/32" in tunnel            # an address from the pool
    w3.assert_can_ping(tunnel.split()[3].split("/")[0])      # the host's own tunnel address


def test_cross_subnet_encapsulates_only_towards_the_other_subnet(xlab):
    h1, h2, h3 = hosts(xlab)
    w1, w2, w3 = h1.workloads["w1"], h2.workloads["w2"], h3.workloads["w3"]
    ok(h1.calicoctl("pool", "add", POOL4, "--ipip=cross-subnet"))
    assert "| cross-subnet " in ok(h1.calicoctl("pool", "show"))
    wait_for("h2's block natively", lambda: route_dev(h1, w2.ip) == "eth0")
    assert route_dev(h1, w3.ip) == "tunl0" and route_dev(h3, w1.ip) == "tunl0"
    assert route_dev(h2, w1.ip) == "eth0"
    assert_connectivity([(w1, w2.ip), (w2, w1.ip), (w1, w3.ip), (w3, w1.ip), (w3, w2.ip)])


def add_endpoint(host, name, mtu=0):
    """A workload added through the endpoint service's API, with an MTU."""
    workload = Workload(host, name)
    with rpc.channel(host.endpoint_addr) as ch:
        endpoint_pb2_grpc.EndpointServiceStub(ch).AddEndpoint(endpoint_pb2.AddEndpointRequest(
            workload_id=name, orchestrator="test", netns_path=workload.ns.path, auto_ipv4=1,
            profile_ids=["net"], mtu=mtu), timeout=30)
    workload.refresh()
    return workload


def mtu_of(workload):
    return int(workload.ns.run("cat", "/sys/class/net/eth0/mtu").stdout)


def test_mtu_is_the_underlay_s_minus_20_and_too_big_gets_fragmentation_needed(xlab):
    h1, _, h3 = hosts(xlab)
    w4, w5 = h1.add_workload("w4", profiles=("net",)), h3.add_workload("w5", profiles=("net",))
    assert (mtu_of(w4), mtu_of(w5)) == (1500, 1500)
    assert h1.ns.run("cat", "/sys/class/net/tunl0/mtu").stdout.strip() == "1500"
    ping = ["ping", "-c1", "-W2", "-M", "do"]
    done = w4.run(*ping, "-s", "1472", w5.ip)
    assert done.returncode == 0, done.stdout + done.stderr
    # A workload given a larger MTU sends what does not fit: its host says so.
    big = add_endpoint(h1, "w6", mtu=1520)
    assert mtu_of(big) == 1520
    refused = big.run(*ping, "-s", "1492", w5.ip)
    assert refused.returncode != 0
    assert "Frag needed and DF set (mtu = 1500)" in refused.stdout
    # A node started with --mtu gives its workloads that one.
    h4 = xlab.add_host("h4", node=True, ipv6=False, subnet=1, node_args=("--mtu=1400",))
    w7 = h4.add_workload("w7", profiles=("net",))
    assert mtu_of(w7) == 1400
    done = w7.run(*ping, "-s", "1372", w4.ip)
    assert done.returncode == 0, done.stdout + done.stderr


def test_upstream_router_two_hops_away_learns_the_blocks(xlab):
    h1, _, _ = hosts(xlab)
    up_ip = f"172.30.1.{UPSTREAM_INDEX}"
    upstream = xlab.add_router("up", UPSTREAM_INDEX, UPSTREAM_CONF, subnet=1)
    ok(h1.calicoctl("bgp", "peer", "add", up_ip, "as", "65000"))
    block = h1.workloads["w1"].ip.rsplit(".", 1)[0]
    wait_for("the upstream router to learn h1's block",
             lambda: f"{block}." in upstream.birdc("show", "route"), timeout=60)
    assert "/26" in upstream.birdc("show", "route")
    assert up(h1, up_ip) and sessions(h1)[up_ip][0] == "global"
    ok(h1.calicoctl("bgp", "peer", "remove", up_ip))


def ipip_payload(inner_src, inner_dst):
    """What follows the outer header of an IP-in-IP packet: an IPv4 ICMP echo
    request."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"x" * 8
    csum = _checksum(icmp)
    icmp = icmp[:2] + struct.pack("!H", csum) + icmp[4:]
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                        socket.inet_aton(inner_src), socket.inet_aton(inner_dst))
    inner = inner[:10] + struct.pack("!H", _checksum(inner)) + inner[12:]
    return inner + icmp


def _checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def echo_requests(workload):
    snmp = workload.ns.run("cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [line.split() for line in snmp if line.startswith("Icmp:")][:2]
    return int(values[names.index("InEchos")])


def test_policy_applies_to_encapsulated_traffic_and_only_nodes_may_encapsulate(xlab):
    h1, _, h3 = hosts(xlab)
    ok(h1.calicoctl("pool", "add", POOL4, "--ipip=always"))
    for name in ("PROF_1_3_5", "PROF_2", "PROF_4"):
        ok(h1.calicoctl("profile", "add", name))
    a1 = h1.add_workload("a1", profiles=("PROF_1_3_5",))
    a2 = h1.add_workload("a2", profiles=("PROF_2",))
    a3 = h1.add_workload("a3", profiles=("PROF_1_3_5",))
    a4 = h3.add_workload("a4", profiles=("PROF_4",))
    a5 = h3.add_workload("a5", profiles=("PROF_1_3_5",))
    members, others = [a1, a3, a5], [a2, a4]
    assert route_dev(h1, a5.ip) == "tunl0"
    assert_connectivity(
        reach=[(a, b.ip) for a in members for b in members if a is not b],
        blocked=[(a, b.ip) for a in members for b in others] +
                [(b, a.ip) for a in members for b in others])
    # IP-in-IP from a host that is not a node (the router) is not taken, even
    # with an inner source policy would let in; the same from a node is.
    w1, w3 = h1.workloads["w1"], h3.workloads["w3"]
    before = echo_requests(w3)
    payload = ipip_payload(w1.ip, w3.ip).hex()
    send = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4); "
            f"s.sendto(bytes.fromhex(sys.argv[1]), ('{h3.ip}', 0))")
    xlab.router.run("python3", "-c", send, payload)
    h1.ns.run("python3", "-c", send, payload)
    wait_for("the node's packet", lambda: echo_requests(w3) == before + 1)
    assert echo_requests(w3) == before + 1          # the router's was never delivered
    rules = h3.ns.run("iptables", "-S", "cali-INPUT").stdout
    assert "-m set --match-set cali4-hosts src" in rules
