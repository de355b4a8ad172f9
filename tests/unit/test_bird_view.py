"""The renderer's model kept current by watch events (node.bird.view): after
any sequence of changes, good or malformed, it renders what a fresh read of
etcd renders, and reports the same malformed records."""

import ipaddress
import random

import pytest

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model import bgp, ipam
from calicopy.model.ipam import Block, Pool
from calicopy.model.record import BadRecord, decode, decode_all
from node.bird import conf
from node.bird.renderer import Renderer
from tests.fakes import MemoryStore

NODES = ["h1", "h2", "h3"]


def put(store, key, value):
    assert store.commit(Txn().put(key, store.get(key), value))


def delete(store, key):
    kv = store.get(key)
    if kv is not None:
        assert store.commit(Txn().delete(kv))


def read_model(store, name, bad, connected):
    """The model as the renderer read it from etcd at every pass before it
    kept one: the reference."""
    kv = store.get(keys.node(name))
    if kv is None:
        return None
    try:
        node = decode(kv, bgp.Node.from_json)
    except BadRecord as exc:
        bad[exc.key] = exc.why
        return None
    blocks = [str(block.cidr) for block in decode_all(store.list(keys.blocks_prefix()),
                                                      ipam.Block.from_json, bad)
              if block.host == name]
    pools = [str(pool.cidr) for pool in ipam.read_pools(store, bad=bad)]
    return conf.build_model(node, bgp.read_nodes(store, bad), bgp.read_config(store, bad),
                            bgp.read_peers(store, bad=bad),
                            bgp.read_peers(store, node=name, bad=bad), pools, blocks, connected)


def random_change(store, rnd):
    """One change of a record the renderer reads (or does not), picked by ``rnd``."""
    kind = rnd.randrange(9)
    host = rnd.choice(NODES)
    if kind == 0:
        put(store, keys.node(host), rnd.choice([
            {"name": host, "ipv4": f"172.30.0.{rnd.randrange(1, 4)}"},
            {"name": host, "ipv4": "172.30.0.9", "ipv6": "fd99::9", "as_num": 65001},
            {"name": host}]))
    elif kind == 1:
        delete(store, keys.node(host))
    elif kind == 2:
        ip = ipaddress.ip_address(rnd.choice(["172.30.0.7", "172.30.0.8", "fd99::7"]))
        key = keys.peer(ip, rnd.choice([None, "h1", "h2"]))
        if rnd.random() < 0.3:
            delete(store, key)
        else:
            put(store, key, {"ip": str(ip), "as_num": rnd.choice([65000, 65002, "x"]),
                             "route_reflector": rnd.random() < 0.2})
    elif kind == 3:
        net = ipaddress.ip_network(rnd.choice(["10.20.0.0/26", "10.20.0.64/26", "fd00::/122"]))
        if rnd.random() < 0.3:
            delete(store, keys.block(net))
        else:
            value = Block.empty(net, rnd.choice(NODES + [None])).to_json()
            put(store, keys.block(net), value if rnd.random() > 0.1 else {"cidr": "x"})
    elif kind == 4:
        net = ipaddress.ip_network(rnd.choice(["10.20.0.0/16", "fd00::/64"]))
        if rnd.random() < 0.3:
            delete(store, keys.pool(net))
        else:
            put(store, keys.pool(net), Pool.new(net).to_json())
    elif kind == 5:
        put(store, keys.BGP_AS, rnd.choice([64512, 65000, "sixty"]))
    elif kind == 6:
        put(store, keys.BGP_NODE_MESH, rnd.choice([{"enabled": True}, {"enabled": False}]))
    elif kind == 7:
        put(store, keys.profile_tags("P"), ["P"])            # not the renderer's
    else:                                   # several records in one commit
        net = ipaddress.ip_network("10.20.1.0/26")
        node, block = keys.node(host), keys.block(net)
        assert store.commit(Txn().put(node, store.get(node), {"name": host, "ipv4": "172.30.0.5"})
                            .put(block, store.get(block), Block.empty(net, host).to_json()))


@pytest.mark.parametrize("seed", range(4))
def test_events_keep_the_model_as_a_fresh_read_makes_it(tmp_path, seed):
    rnd = random.Random(seed)
    store = MemoryStore()
    renderer = Renderer(store, "h1", tmp_path / "bird.conf", str(tmp_path / "no-bird.ctl"),
                        connected=lambda ip: ip.startswith("172."))
    queued = []
    store.watch(keys.PREFIX, lambda response: queued.extend(response.events or []))
    renderer.sync(full=True)
    for step in range(80):
        for _ in range(rnd.randrange(1, 4)):
            random_change(store, rnd)
        taken, queued[:] = list(queued), []
        renderer.sync(full=rnd.random() < 0.1, events=taken)
        fresh_bad, held_bad = {}, {}
        fresh = read_model(store, "h1", fresh_bad, lambda ip: ip.startswith("172."))
        held = renderer.view.model(held_bad, lambda ip: ip.startswith("172."))
        assert (conf.render(held) if held else None) == \
            (conf.render(fresh) if fresh else None), f"step {step}"
        assert held_bad == fresh_bad, f"step {step}"
        assert renderer.quarantine.records == fresh_bad, f"step {step}"


def test_changes_bird_is_not_made_of_end_at_the_model(tmp_path, monkeypatch):
    """Another host's allocations, our own block filling up, workloads: the
    renderer applies them and stops there (no model, no rendering), so in a
    busy cluster a host's renderer does not work for every other host's
    adds. A change it is made of, and the poll (a pass without events), do
    make the model again."""
    store = MemoryStore()
    put(store, keys.node("h1"), {"name": "h1", "ipv4": "172.30.0.1"})
    nets = [ipaddress.ip_network(n) for n in ("10.20.0.0/26", "10.20.0.64/26", "10.20.0.128/26")]
    blocks = {net: Block.empty(net, host) for net, host in zip(nets, ["h1", "h2", "h1"])}
    for net in nets[:2]:
        put(store, keys.block(net), blocks[net].to_json())
    renderer = Renderer(store, "h1", tmp_path / "bird.conf", str(tmp_path / "no-bird.ctl"),
                        connected=lambda ip: True)
    queued = []
    store.watch(keys.PREFIX, lambda response: queued.extend(response.events or []))
    renderer.sync(full=True)
    made = []
    model = renderer.view.model
    monkeypatch.setattr(renderer.view, "model", lambda *a: made.append(1) or model(*a))

    def events():
        taken, queued[:] = list(queued), []
        assert taken
        return taken

    for net in nets[:2]:            # an allocation in our block and in h2's
        blocks[net].allocate(1, "w1", "h2" if net == nets[1] else "h1", {})
        put(store, keys.block(net), blocks[net].to_json())
    put(store, keys.profile_tags("P"), ["P"])
    assert renderer.sync(events=events()) is False and made == []
    put(store, keys.block(nets[2]), blocks[nets[2]].to_json())     # a block of ours
    renderer.sync(events=events())
    assert made == [1] and "10.20.0.128/26" in (tmp_path / "bird.conf").read_text()
    renderer.sync(events=[])        # the poll: which peers are connected may have changed
    assert made == [1, 1]
