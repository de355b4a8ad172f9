"""`calicoctl node remove --name=X` retires a node from any host, dead or
alive: its addresses, its block affinities (blocks with other hosts'
addresses stay, without affinity) and its records go. Real etcd, the IPAM
and BGP services, calicoctl as a user runs it."""

import ipaddress

from calico.bgp.v1 import bgp_pb2, bgp_pb2_grpc
from calico.ipam.v1 import ipam_pb2
from calicopy import rpc
from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.endpoint import ACTIVE, Endpoint, endpoint_id
from calicopy.model.ipam import Block
from tests.cli import fails, ok


def test_node_remove_retires_a_dead_node(store, ipam_client, calicoctl, bgp_server, tmp_path):
    env = {"CALICO_BGP_ADDR": bgp_server[0], "CALICO_STATE_DIR": str(tmp_path)}
    with rpc.channel(bgp_server[0]) as channel:
        bgp = bgp_pb2_grpc.BgpServiceStub(channel)
        for name, ip in (("node-x", "172.30.9.1"), ("node-y", "172.30.9.2")):
            bgp.RegisterNode(bgp_pb2.RegisterNodeRequest(node=bgp_pb2.Node(name=name, ipv4=ip)),
                             timeout=10)
        bgp.AddPeer(bgp_pb2.AddPeerRequest(peer=bgp_pb2.Peer(ip="172.30.9.100", as_num=65001,
                                                             node="node-x")), timeout=10)
        ipam_client.create_pool(pool=ipam_pb2.Pool(cidr="10.97.0.0/24"))
        # A workload of node-x, as its endpoint service made it.
        ep_id = endpoint_id("node-x", "netns", "netns:web1", "eth0")
        w1 = ipam_client.auto_assign(num_ipv4=1, handle_id="node-x/netns/netns:web1",
                                     hostname="node-x", attributes={
                                         "node": "node-x", "endpoint": ep_id}).ipv4[0]
        ep = Endpoint(ep_id, "node-x", "netns", "netns:web1", "eth0", "/var/run/netns/web1",
                      ACTIVE, ipv4_nets=[f"{w1}/32"])
        store.commit(Txn().create(keys.endpoint("node-x", "netns", "netns:web1", ep_id),
                                  ep.to_json()))
        store.commit(Txn().create(keys.bgp_status("node-x"), {"node": "node-x"}))
        # The Docker driver's address, one node-y borrowed in node-x's block,
        # and a block holding only node-x's address.
        d1 = ipam_client.auto_assign(num_ipv4=1, handle_id="node-x/docker-ipam/d1",
                                     hostname="node-x", attributes={"node": "node-x"}).ipv4[0]
        shared = ipaddress.ip_network(f"{w1}/26", strict=False)
        borrowed = str(shared.network_address + 40)
        ipam_client.assign_ip(ip=borrowed, handle_id="node-y/netns/b1", hostname="node-y")
        alone = next(b for b in ipaddress.ip_network("10.97.0.0/24").subnets(new_prefix=26)
                     if b != shared)
        w2 = str(alone.network_address + 1)
        ipam_client.assign_ip(ip=w2, handle_id="node-x/netns/w2", hostname="node-x")

        assert ok(calicoctl("node", "remove", "--name=node-x", env=env)) == (
            "Removed node node-x: released 3 address(es) and freed 1 block(s); 1 block(s) "
            "still hold other hosts' addresses and stay, without affinity.\n")

        assert store.list(keys.host("node-x")) == []
        assert [n.node.name for n in bgp.ListNodes(bgp_pb2.ListNodesRequest(),
                                                   timeout=10).nodes] == ["node-y"]
    for ip in (w1, d1, w2):
        assert not ipam_client.get_allocation(ip=ip).allocated
    assert ipam_client.get_allocation(ip=borrowed).handle_id == "node-y/netns/b1"
    assert [kv.key for kv in store.list(keys.AFFINITIES)] == []
    assert Block.from_json(store.get(keys.block(shared)).json()).host is None
    assert store.get(keys.block(alone)) is None
    assert "no problems found" in ok(calicoctl("ipam", "check"))

    fails(calicoctl("node", "remove", "--name=node-x", env=env),
          "Node node-x is not registered and holds no addresses or blocks: nothing to remove.")
