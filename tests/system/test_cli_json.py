"""`-o json` of the commands that need a running node (real namespaces, BIRD,
etcd and services): `status`, `container show` and `policy explain` of
containers. Each document parses, has the documented kind, and says what the
table says. One lab (two nodes, IPv4 and IPv6) serves the whole module.
"""

import pytest

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import rpc
from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from tests.cli import document, fails, ok, tables
from tests.system.conftest import POOL4, POOL6
from tests.system.helpers import wait_for
from tools.lab import Lab


@pytest.fixture(scope="module")
def jlab(etcd_server, pki_dir, tmp_path_factory):
    store = EtcdStore.from_env(etcd_server[0])
    store.delete_prefix(keys.ROOT)
    lab = Lab(tmp_path_factory.mktemp("clijson"), etcd_server[1], pki_dir)
    try:
        with rpc.channel(lab.unix["ipam"]) as ch:      # before any node: no default pools
            stub = ipam_pb2_grpc.IpamServiceStub(ch)
            for cidr in (POOL4, POOL6):
                stub.CreatePool(ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr=cidr)),
                                timeout=10)
        with rpc.channel(lab.unix["policy"]) as ch:
            for name in ("WEB", "DB"):
                policy_pb2_grpc.PolicyServiceStub(ch).CreateProfile(
                    policy_pb2.CreateProfileRequest(name=name), timeout=10)
        lab.add_host("h1", node=True)
        lab.add_host("h2", node=True)
        yield lab
    finally:
        lab.close()
        store.delete_prefix(keys.ROOT)
        store.close()


def status(host):
    return document(host.calicoctl("status", "-o", "json"), "NodeStatus")


def test_status(jlab):
    h1, h2 = jlab.hosts["h1"], jlab.hosts["h2"]

    def established():
        sessions = status(h1)["bgp_sessions"]
        return sorted((s["peer_address"], s["info"]) for s in sessions) == \
            [(h2.ip, "Established"), (h2.ip6, "Established")]
    wait_for("h1's sessions with h2 to be established", established, timeout=60)
    text = ok(h1.calicoctl("status"))
    doc = status(h1)
    assert text.splitlines()[0] == \
        f"calico-node h1 is running (supervisor pid {doc['supervisor_pid']})."
    assert doc["node"] == "h1" and doc["supervisor_pid"] == h1.supervisor_pid()
    processes, bgp4, bgp6 = tables(text)
    assert [(r["Process"], r["State"], r["PID"], r["Restarts"]) for r in processes] == \
        [(p["name"], p["state"], str(p["pid"] or "-"), str(p["restarts"]))
         for p in doc["processes"]]
    assert {"endpoint service", "policy agent", "bird"} <= {p["name"] for p in doc["processes"]}
    assert doc["processes"][0]["pid"] == h1.child_pid(doc["processes"][0]["name"])
    assert [(r["Peer address"], r["Peer type"], r["State"], r["Since"], r["Info"],
             r["Last error"]) for r in bgp4 + bgp6] == \
        [(s["peer_address"], s["peer_type"], s["state"], s["since"], s["info"], s["last_error"])
         for s in doc["bgp_sessions"]]
    assert [s["ip_version"] for s in doc["bgp_sessions"]] == [4, 6]
    assert doc["skipped_records"] == [] and "Malformed records" not in text
    fails(h1.calicoctl("status", "--name=nowhere", "-o", "json"),
          "calico-node is not running on this host (node nowhere).")


def test_container_show(jlab):
    h1 = jlab.hosts["h1"]
    web = h1.add_workload("web", "ipv4", "ipv6", profiles=("WEB",))
    h1.add_workload("other")
    text = ok(h1.calicoctl("container", "show"))
    doc = document(h1.calicoctl("container", "show", "-o", "json"), "ContainerList")
    assert [(r["Container"], r["Interface"], r["Host interface"], r["Addresses"], r["MAC"],
             r["State"], r["Profiles"], r["Endpoint ID"]) for r in tables(text)[0]] == \
        [(e["workload_id"], e["interface_name"], e["host_interface"],
          ", ".join(e["ipv4_nets"] + e["ipv6_nets"]), e["mac"], e["state"],
          ",".join(e["profile_ids"]), e["endpoint_id"]) for e in doc["endpoints"]]
    shown = {e["workload_id"]: e for e in doc["endpoints"]}
    assert set(shown) >= {"netns:" + web.ns.name}
    mine = shown["netns:" + web.ns.name]
    assert (mine["orchestrator"], mine["state"], mine["profile_ids"]) == \
        ("netns", "active", ["WEB"])
    assert [net.split("/")[0] for net in mine["ipv4_nets"] + mine["ipv6_nets"]] == web.ips


def test_policy_explain_of_containers(jlab):
    h1, h2 = jlab.hosts["h1"], jlab.hosts["h2"]
    client = h1.add_workload("client", profiles=("WEB",))
    server = h2.add_workload("server", profiles=("DB",))
    args = ("policy", "explain", client.ref, server.ip, "--protocol=tcp", "--port=5432")
    text = ok(h1.calicoctl(*args))
    doc = document(h1.calicoctl(*args, "-o", "json"), "PolicyExplanation")
    lines = text.splitlines()
    assert lines[0] == f"DENIED: tcp port 5432 from {client.ip} ({client.ref}) to {server.ip}"
    assert doc["src"] == {"ip": client.ip, "container": client.ref}
    assert doc["dst"] == {"ip": server.ip, "container": None}
    assert lines[1:] == [f"  {s['direction']:<8} {s['text']}" for s in doc["steps"]]
    assert [(s["direction"], s["allowed"], s["profile"], s["rule_number"])
            for s in doc["steps"]] == [("outbound", True, "WEB", 1), ("inbound", False, "DB", 2)]
    assert doc["steps"][1]["workload_id"] == server.ref
