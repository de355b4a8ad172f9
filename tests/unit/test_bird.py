"""The BIRD configuration model and its rendering (golden files pin the output)."""

import os
from pathlib import Path

import pytest

from node.bird.ctl import check_config, parse_sessions
from node.bird.conf import (GLOBAL, MESH, NODE, ROUTE_REFLECTOR, build_model, parse_protocol_name,
                       protocol_name, render)
from calicopy.model.bgp import BgpConfig, Node, Peer

GOLDEN = Path(__file__).with_name("golden")
H1 = Node("h1", "172.30.0.2", "fd99::2")
H2 = Node("h2", "172.30.0.3", "fd99::3", as_num=65002)
H3 = Node("h3", "172.30.0.4")
POOLS = ["fd80::/64", "10.20.0.0/16"]


def names(model):
    return [(p.name, p.kind, p.as_num) for p in model.peers]


def test_full_mesh_per_family_with_per_node_as():
    model = build_model(H1, [H1, H2, H3], BgpConfig(), [], [], POOLS, ["10.20.1.0/26"])
    assert names(model) == [("Mesh_172_30_0_3", MESH, 65002), ("Mesh_172_30_0_4", MESH, 64511),
                            ("Mesh6_fd99__3", MESH, 65002)]
    assert model.local_as == 64511 and model.pools == ["10.20.0.0/16", "fd80::/64"]


def test_route_reflectors_replace_the_mesh_and_peers_add_to_it():
    rr = Peer("172.30.0.250", route_reflector=True)
    upstream = Peer("172.30.0.251", 65000)
    own = Peer("172.30.0.252", 65001, node="h1")
    model = build_model(H1, [H1, H2], BgpConfig(), [rr, upstream], [own], POOLS, [])
    assert names(model) == [("RR_172_30_0_250", ROUTE_REFLECTOR, 64511),
                            ("Global_172_30_0_251", GLOBAL, 65000),
                            ("Node_172_30_0_252", NODE, 65001)]
    off = build_model(H1, [H1, H2], BgpConfig(node_mesh=False), [upstream], [], POOLS, [])
    assert names(off) == [("Global_172_30_0_251", GLOBAL, 65000)]


def test_no_ipv6_sessions_without_an_ipv6_address():
    model = build_model(H3, [H1, H3], BgpConfig(default_as=65100), [], [], POOLS, [])
    assert names(model) == [("Mesh_172_30_0_2", MESH, 65100)]


@pytest.mark.parametrize("kind,ip", [(MESH, "172.30.0.3"), (ROUTE_REFLECTOR, "fd99::250"),
                                     (GLOBAL, "10.0.0.1"), (NODE, "2001:db8::1")])
def test_protocol_names_round_trip(kind, ip):
    assert parse_protocol_name(protocol_name(kind, ip))[:2] == (kind, ip)
    assert parse_protocol_name("kernel4") is None


def on_first_subnet(ip):
    return ip.startswith(("172.30.0.", "fd99::"))


def test_peers_off_the_connected_subnets_are_multihop():
    far = Node("h4", "172.30.1.2")
    rr = Peer("172.30.1.250", route_reflector=True)
    mesh = build_model(H1, [H1, H3, far], BgpConfig(), [], [], POOLS, [],
                       connected=on_first_subnet)
    assert [(p.ip, p.multihop) for p in mesh.peers] == [("172.30.0.4", False),
                                                        ("172.30.1.2", True)]
    text = render(mesh)
    near, far_text = text.split("protocol bgp Mesh_172_30_0_4")[1].split("protocol bgp Mesh_")
    assert "  direct;" in near and "multihop" not in near and "gateway" not in near
    assert "  multihop;" in far_text and "gateway recursive;" in far_text
    reflected = build_model(H1, [H1, far], BgpConfig(), [rr], [], POOLS, [],
                            connected=on_first_subnet)
    assert [(p.name, p.multihop) for p in reflected.peers] == [("RR_172_30_1_250", True)]


SHOW_PROTOCOLS_ALL = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     06:17:55.430  

Mesh_172_30_1_2 BGP        ---        start  06:17:55.430  Active        Socket: Connection closed
  BGP state:          Active
    Neighbor address: 172.30.1.2
    Last error:       Socket: Connection closed
  Channel ipv4
    State:          DOWN

Global_172_30_1_251 BGP        ---        up     06:17:56.001  Established   
  BGP state:          Established
    Last error:       Received: Bad peer AS
  Channel ipv4
    State:          UP
"""


def test_sessions_say_why_they_are_not_up():
    sessions = parse_sessions(SHOW_PROTOCOLS_ALL)
    assert [(s.peer, s.peer_type, s.state, s.info, s.last_error) for s in sessions] == [
        ("172.30.1.2", MESH, "start", "Active", "Socket: Connection closed"),
        ("172.30.1.251", GLOBAL, "up", "Established", "")]
    assert sessions[0].since == "06:17:55.430"


@pytest.mark.parametrize("case", ["mesh", "empty", "multihop"])
def test_rendering_matches_golden_and_bird_accepts_it(case, tmp_path):
    if case == "mesh":
        model = build_model(H1, [H1, H2, H3], BgpConfig(), [Peer("172.30.0.251", 65000)], [],
                            POOLS, ["10.20.1.0/26", "fd80::40/122"])
    elif case == "multihop":
        model = build_model(H1, [H1, H3, Node("h4", "172.30.1.2", "fd99:0:0:1::2")],
                            BgpConfig(), [Peer("172.30.1.251", 65000)], [], POOLS,
                            ["10.20.1.0/26"], connected=on_first_subnet)
    else:
        model = build_model(H3, [H3], BgpConfig(), [], [], [], [])
    text = render(model)
    golden = GOLDEN / f"bird-{case}.conf"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    assert render(model) == text                      # deterministic
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    check_config(str(conf))                           # BIRD itself accepts it
