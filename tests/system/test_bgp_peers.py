"""Mesh off, route reflectors and upstream routers, with real BIRD on every side."""

from tests.system.helpers import NET, block_routes, established, wait_for
from tools.lab import assert_connectivity

RR_INDEX, UPSTREAM_INDEX = 250, 251

# A plain BIRD route reflector for hosts .2-.4 (the test's, not calico-py's).
RR_CONF = """
router id $ip;
protocol device {}
""" + "".join(f"""
protocol bgp client{i} {{
  local $ip as 64511;
  neighbor 172.30.0.{i} as 64511;
  rr client;
  direct;
  ipv4 {{ import all; export all; }};
}}
""" for i in (2, 3, 4))

# An operator's router in AS 65000 that only listens.
UPSTREAM_CONF = """
router id $ip;
protocol device {}
""" + "".join(f"""
protocol bgp host{i} {{
  local $ip as 65000;
  neighbor 172.30.0.{i} as 64511;
  direct;
  ipv4 {{ import all; export none; }};
}}
""" for i in (2, 3, 4))

def test_mesh_off_then_route_reflector(lab, pools):
    h1, h2 = lab.add_host("h1", node=True, ipv6=False), lab.add_host("h2", node=True, ipv6=False)
    w1, w2 = h1.add_workload("w1", profiles=NET), h2.add_workload("w2", profiles=NET)
    assert_connectivity([(w1, w2.ip), (w2, w1.ip)])

    result = h1.calicoctl("bgp", "node-mesh", "off")
    assert (result.returncode, result.stdout) == (0, "Node-to-node mesh turned off.\n")
    assert h1.calicoctl("bgp", "node-mesh").stdout == "off\n"
    wait_for("the mesh to go", lambda: not block_routes(h1) and not block_routes(h2))
    assert_connectivity([], blocked=[(w1, w2.ip), (w2, w1.ip)])

    rr = lab.add_router("rr", RR_INDEX, RR_CONF)
    result = h1.calicoctl("bgppeer", "rr", "add", rr.ip)
    assert (result.returncode, result.stdout) == (0, f"Added route reflector {rr.ip}.\n")
    assert rr.ip in h1.calicoctl("bgppeer", "rr", "show").stdout
    wait_for("sessions with the reflector", lambda: established(h1, 1) and established(h2, 1))
    assert "route reflector" in h1.calicoctl("status").stdout
    assert_connectivity([(w1, w2.ip), (w2, w1.ip)])

    assert h1.calicoctl("bgppeer", "rr", "remove", rr.ip).returncode == 0
    assert h1.calicoctl("bgppeer", "rr", "show", "--ipv4").stdout == \
        "No IPv4 BGP Peers defined.\n"


def test_upstream_router_learns_block_routes(lab, pools):
    h1 = lab.add_host("h1", node=True, ipv6=False)
    w1 = h1.add_workload("w1", profiles=NET)
    upstream = lab.add_router("up", UPSTREAM_INDEX, UPSTREAM_CONF)
    result = h1.calicoctl("bgp", "peer", "add", upstream.ip, "as", "65000")
    assert result.returncode == 0, result.stderr
    assert upstream.ip in h1.calicoctl("bgp", "peer", "show").stdout
    block = w1.ip.rsplit(".", 1)[0]
    wait_for("the upstream router to learn the block",
             lambda: block in upstream.birdc("show", "route"))
    learned = upstream.birdc("show", "route")
    assert "/26" in learned and "10.20." in learned
    wait_for("the global peer session", lambda: "global" in h1.calicoctl("status").stdout)


def test_node_specific_peer(lab, pools):
    h1 = lab.add_host("h1", node=True, ipv6=False)
    h1.add_workload("w1", profiles=NET)
    upstream = lab.add_router("up", UPSTREAM_INDEX, UPSTREAM_CONF)
    result = h1.calicoctl("node", "bgp", "peer", "add", upstream.ip, "as", "65000")
    assert result.returncode == 0, result.stderr
    assert upstream.ip in h1.calicoctl("node", "bgp", "peer", "show").stdout
    wait_for("the upstream router to learn the block",
             lambda: "10.20." in upstream.birdc("show", "route"))
    assert "node specific" in h1.calicoctl("status").stdout
