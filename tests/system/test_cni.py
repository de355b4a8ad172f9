"""The CNI plugins, driven as a runtime drives them: real namespaces, nodes, BIRD.

Two simulated hosts run `calicoctl node` over this module's own etcd keys and
IPAM, BGP and policy services (module-scoped, so the hosts start once). The
plugins are executed per the specification (``CNI_*`` variables, config on
stdin) from inside a host's namespace, as a runtime on that host would, and
by a real runtime: containerd's ``ctr run --cni``, with a private containerd
whose /etc/cni/net.d, /opt/cni/bin and /var/lib/cni are overlays in a mount
namespace of its own (the machine's are never read or written).

Every attachment a test makes is deleted in its teardown; namespaces, nodes,
containerd, its shims and containers go in the fixtures' ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.ipam.v1 import ipam_pb2
from calicopy.datastore import keys
from calicopy.datastore.etcd import EtcdStore
from calicopy import rpc
from cni.invoke import Chain, invoke
from tests.conftest import ROOT, IpamClient
from tests.system.helpers import established, wait_for
from tools import launch, processes
from tools.lab import Lab, Workload

CNI_BIN = ROOT / "cni" / "bin"
DEBIAN_CNI = "/usr/lib/cni"
CNI_PATH = [str(CNI_BIN), DEBIAN_CNI]
POOL4, POOL6, TINY = "10.20.0.0/16", "fd80:24e2:f998:72d6::/64", "10.30.0.0/30"
NETWORK = "cninet"

# No skip: `make test` installs containernetworking-plugins, so a missing
# reference plugin is a failure, not a reason to test less.


# Fixtures ---------------------------------------------------------------------------------

class Cluster:
    """The module's services, lab and two node hosts."""

    def __init__(self, lab: Lab, ipam: IpamClient, endpoint_stubs: dict):
        self.lab, self.ipam = lab, ipam
        self.h1, self.h2 = lab.hosts["cni1"], lab.hosts["cni2"]
        self._stubs = endpoint_stubs

    def endpoints(self, host, workload_id: str = "") -> list:
        stub = self._stubs[host.name]
        return list(stub.ListEndpoints(endpoint_pb2.ListEndpointsRequest(
            orchestrator="cni" if workload_id else "", workload_id=workload_id),
            timeout=10).endpoints)

    def allocated(self) -> int:
        return sum(p.allocated for p in self.ipam.get_usage().pools)

    def calico(self, host, *more: dict, name: str = NETWORK, version: str = "1.0.0",
               **keys_) -> dict:
        """A configuration list: calico (with ``keys_``) first, then ``more``."""
        plugin = {"type": "calico", "nodename": host.name, "state_dir": str(host.state_dir),
                  "ipam_addr": self.lab.ipam, "policy_addr": self.lab.policy,
                  "ipam": {"type": "calico-ipam", "assign_ipv6": True}}
        plugin.update(keys_)
        return {"cniVersion": version, "name": name, "plugins": [plugin, *more]}

    def chain(self, host, conflist: dict) -> Chain:
        return Chain(conflist, CNI_PATH, runner=["nsenter", f"--net={host.ns.path}"])


@pytest.fixture(scope="module")
def cluster(etcd_server, pki_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cni")
    store = EtcdStore.from_env(etcd_server[0])
    store.delete_prefix(keys.ROOT)
    lab = channels = client = None
    try:
        lab = Lab(tmp, etcd_server[1], pki_dir)
        client = IpamClient(lab.unix["ipam"])
        for cidr in (POOL4, POOL6):
            client.create_pool(pool=ipam_pb2.Pool(cidr=cidr))
        hosts = [lab.add_host(name, node=True) for name in ("cni1", "cni2")]
        channels = {h.name: rpc.channel(h.endpoint_addr) for h in hosts}
        stubs = {n: endpoint_pb2_grpc.EndpointServiceStub(c) for n, c in channels.items()}
        for h in hosts:
            wait_for(f"{h.name} BGP sessions", lambda h=h: established(h, 2))
        yield Cluster(lab, client, stubs)
    finally:
        for channel in (channels or {}).values():
            channel.close()
        if lab is not None:
            lab.close()
        if client is not None:
            client.channel.close()
        store.delete_prefix(keys.ROOT)
        store.close()


class Attachments:
    """ADDs made through a chain, deleted (DEL) at teardown."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.made: list[tuple] = []

    def workload(self, host, name: str) -> Workload:
        return Workload(host, f"{name}{uuid.uuid4().hex[:4]}")

    def add(self, host, conflist: dict, workload: Workload, container_id: str = "",
            ifname: str = "eth0", runtime: dict | None = None) -> tuple[str, dict]:
        container_id = container_id or uuid.uuid4().hex
        chain = self.cluster.chain(host, conflist)
        self.made.append((chain, container_id, workload.ns.path, ifname, runtime))
        result = chain.add(container_id, workload.ns.path, ifname, runtime)
        workload.refresh()
        return container_id, result

    def close(self) -> None:
        for chain, container_id, netns, ifname, runtime in reversed(self.made):
            chain.delete(container_id, netns, ifname, runtime=runtime)


@pytest.fixture
def attach(cluster):
    made = Attachments(cluster)
    try:
        yield made
    finally:
        made.close()


def run_calico(host, command: str, config, container_id: str = "", netns: str = "",
               ifname: str = "eth0", **kw):
    return invoke(str(CNI_BIN / "calico"), command, config, container_id=container_id,
                  netns=netns, ifname=ifname, cni_path=CNI_PATH,
                  runner=["nsenter", f"--net={host.ns.path}"], **kw)


def plugin_conf(conflist: dict, index: int = 0, **extra) -> dict:
    """One plugin's configuration as a runtime hands it over."""
    return {**conflist["plugins"][index], "cniVersion": conflist["cniVersion"],
            "name": conflist["name"], **extra}


def assert_error(outcome, code: int, *words: str) -> None:
    assert outcome.returncode != 0, outcome
    err = outcome.output
    assert err is not None, f"no JSON on stdout: {outcome}"
    assert set(err) <= {"cniVersion", "code", "msg", "details"}, err
    assert err["code"] == code, err
    assert "cniVersion" in err and err["msg"], err
    for word in words:
        assert word in err["msg"], err
    assert "Traceback" not in outcome.stdout + outcome.stderr


# Per the specification --------------------------------------------------------------------

def test_two_workloads_on_two_hosts_reach_each_other(cluster, attach):
    conflist = cluster.calico(cluster.h1)
    w1 = attach.workload(cluster.h1, "w1")
    cid1, result = attach.add(cluster.h1, conflist, w1)
    w2 = attach.workload(cluster.h2, "w2")
    attach.add(cluster.h2, cluster.calico(cluster.h2), w2)

    assert result["cniVersion"] == "1.0.0"
    host_if, container_if = result["interfaces"]
    assert host_if["name"].startswith("cali") and "sandbox" not in host_if
    assert container_if == {"name": "eth0", "mac": container_if["mac"], "sandbox": w1.ns.path}
    v4 = [ip for ip in result["ips"] if "." in ip["address"]]
    v6 = [ip for ip in result["ips"] if ":" in ip["address"]]
    assert len(v4) == len(v6) == 1
    assert v4[0] == {"address": v4[0]["address"], "gateway": "169.254.1.1", "interface": 1}
    assert v4[0]["address"].endswith("/32") and v6[0]["address"].endswith("/128")
    assert {"dst": "0.0.0.0/0", "gw": "169.254.1.1"} in result["routes"]
    assert sorted(w1.ips) == sorted(ip["address"].split("/")[0] for ip in result["ips"])
    mtu = w1.ns.run("cat", "/sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == "1500"

    # The endpoint: orchestrator "cni", the container id, labelled with the network.
    (ep,) = cluster.endpoints(cluster.h1, cid1)
    assert (ep.interface_name, ep.host_interface) == ("eth0", host_if["name"])
    assert ep.labels["cni.network"] == NETWORK and ep.profile_ids == [NETWORK]

    for a, b in ((w1, w2), (w2, w1)):
        for ip in b.ips:
            a.assert_can_ping(ip, retries=40)


def test_add_retried_returns_the_same_result(cluster, attach):
    conflist = cluster.calico(cluster.h1)
    w = attach.workload(cluster.h1, "retry")
    cid, first = attach.add(cluster.h1, conflist, w)
    before = cluster.allocated()
    again = run_calico(cluster.h1, "ADD", plugin_conf(conflist), cid, w.ns.path)
    assert again.ok, again
    assert again.output == first
    assert cluster.allocated() == before
    assert len(cluster.endpoints(cluster.h1, cid)) == 1

    # Same container id, another namespace while the first is alive: refused.
    other = attach.workload(cluster.h1, "other")
    clash = run_calico(cluster.h1, "ADD", plugin_conf(conflist), cid, other.ns.path)
    assert_error(clash, 103, "already has interface eth0")
    # The first namespace gone without a DEL: the stale endpoint is replaced.
    w.delete()
    moved = run_calico(cluster.h1, "ADD", plugin_conf(conflist), cid, other.ns.path)
    assert moved.ok, moved
    assert moved.output["interfaces"][1]["sandbox"] == other.ns.path
    assert cluster.allocated() == before
    attach.made.append((cluster.chain(cluster.h1, conflist), cid, other.ns.path, "eth0", None))


def test_check_passes_then_fails_after_a_route_is_deleted(cluster, attach):
    conflist = cluster.calico(cluster.h1)
    w = attach.workload(cluster.h1, "chk")
    cid, result = attach.add(cluster.h1, conflist, w)
    chain = cluster.chain(cluster.h1, conflist)
    assert chain.check(cid, w.ns.path, result) == []

    # A result that says something else fails too.
    wrong = json.loads(json.dumps(result))
    wrong["ips"][0]["address"] = "10.20.255.254/32"
    (failed,) = chain.check(cid, w.ns.path, wrong)
    assert_error(failed, 104, "10.20.255.254/32")

    # The node's minutely reconcile could restore the route in between: then
    # the route is back and we delete it again.
    for _ in range(3):
        w.ns.run("ip", "route", "del", "default")
        failures = chain.check(cid, w.ns.path, result)
        if failures:
            break
        assert "default via 169.254.1.1" in w.ns.run("ip", "route").stdout
    (failed,) = failures
    assert_error(failed, 104, "the default route via 169.254.1.1 is missing")

    # CHECK is not in 0.3.1; unknown container -> 3.
    old = run_calico(cluster.h1, "CHECK", plugin_conf(conflist, cniVersion="0.3.1",
                                                       prevResult=result), cid, w.ns.path)
    assert_error(old, 1, "CHECK needs cniVersion 0.4.0")
    unknown = run_calico(cluster.h1, "CHECK", plugin_conf(conflist, prevResult=result),
                         "nosuchcontainer", w.ns.path)
    assert_error(unknown, 3, "no endpoint")


def test_del_twice_unknown_container_and_gone_namespace(cluster, attach):
    conflist = cluster.calico(cluster.h1)
    before = cluster.allocated()
    w = attach.workload(cluster.h1, "del")
    cid, result = attach.add(cluster.h1, conflist, w)
    host_if = result["interfaces"][0]["name"]
    conf = plugin_conf(conflist, prevResult=result)
    for _ in range(2):
        out = run_calico(cluster.h1, "DEL", conf, cid, w.ns.path)
        assert (out.returncode, out.stdout) == (0, ""), out
    assert cluster.endpoints(cluster.h1, cid) == []
    assert cluster.allocated() == before
    assert host_if not in cluster.h1.ns.run("ip", "link").stdout
    assert run_calico(cluster.h1, "DEL", conf, "neverseen", w.ns.path).ok
    # DEL needs only where the services are: keys an ADD refuses do not stop it.
    assert run_calico(cluster.h1, "DEL", dict(conf, mtu=70000), "neverseen", w.ns.path).ok

    # The namespace gone before the DEL (and no CNI_NETNS at all).
    w2 = attach.workload(cluster.h1, "gone")
    cid2, _ = attach.add(cluster.h1, conflist, w2)
    w2.delete()
    out = run_calico(cluster.h1, "DEL", plugin_conf(conflist), cid2, "")
    assert out.ok, out
    assert cluster.endpoints(cluster.h1, cid2) == []
    assert cluster.allocated() == before


def test_gc_releases_what_the_runtime_no_longer_lists(cluster, attach):
    conflist = cluster.calico(cluster.h1, version="1.1.0")
    before = cluster.allocated()
    keep, leak = attach.workload(cluster.h1, "keep"), attach.workload(cluster.h1, "leak")
    cid_keep, _ = attach.add(cluster.h1, conflist, keep)
    cid_leak, _ = attach.add(cluster.h1, conflist, leak)
    # Another network's endpoint on the same node is not this network's business.
    other_net = attach.workload(cluster.h1, "othernet")
    cid_other, _ = attach.add(cluster.h1, cluster.calico(cluster.h1, name="othernet"), other_net)
    assert cluster.allocated() == before + 6

    chain = cluster.chain(cluster.h1, conflist)
    assert chain.gc([(cid_keep, "eth0")]) == []
    assert cluster.endpoints(cluster.h1, cid_leak) == []
    assert len(cluster.endpoints(cluster.h1, cid_keep)) == 1
    assert len(cluster.endpoints(cluster.h1, cid_other)) == 1
    assert cluster.allocated() == before + 4
    assert leak.ns.run("ip", "link", "show", "eth0", check=False).returncode != 0

    old = run_calico(cluster.h1, "GC", plugin_conf(conflist, cniVersion="1.0.0", **{
        "cni.dev/valid-attachments": []}))
    assert_error(old, 1, "GC needs cniVersion 1.1.0")


def test_mtu_on_both_ends_of_the_veth(cluster, attach):
    conflist = cluster.calico(cluster.h1, mtu=1400)
    w = attach.workload(cluster.h1, "mtu")
    cid, result = attach.add(cluster.h1, conflist, w)
    host_if = result["interfaces"][0]["name"]
    assert w.ns.run("cat", "/sys/class/net/eth0/mtu").stdout.strip() == "1400"
    assert cluster.h1.ns.run("cat", f"/sys/class/net/{host_if}/mtu").stdout.strip() == "1400"
    (ep,) = cluster.endpoints(cluster.h1, cid)
    assert ep.mtu == 1400
    assert cluster.chain(cluster.h1, conflist).check(cid, w.ns.path, result) == []


def test_add_check_del_import_neither_grpc_nor_protobuf(cluster, attach):
    """A runtime starts a process per command: ADD, CHECK and DEL reach the
    endpoint service through its JSON socket, with the standard library. (The
    first ADD of a network may create its profile over gRPC: done first.)"""
    conflist = cluster.calico(cluster.h1)
    attach.add(cluster.h1, conflist, attach.workload(cluster.h1, "imp"))
    w = attach.workload(cluster.h1, "imp")
    cid = uuid.uuid4().hex
    attach.made.append((cluster.chain(cluster.h1, conflist), cid, w.ns.path, "eth0", None))
    # What cni/bin/calico runs, with the interpreter listing every import on stderr.
    traced = ["nsenter", f"--net={cluster.h1.ns.path}", sys.executable, "-X", "importtime",
              "-I", "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
              "from cni.calico import main; main()"]

    def run(command: str, conf: dict):
        out = invoke(str(ROOT), command, conf, container_id=cid, netns=w.ns.path,
                     cni_path=CNI_PATH, runner=traced)
        assert out.ok, out
        modules = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                   if line.startswith("import time:")]
        assert "cni.rpc" in modules
        assert [m for m in modules if m.split(".")[0] in ("grpc", "calico")
                or m.startswith("google.protobuf")] == [], command
        return out.output

    result = run("ADD", plugin_conf(conflist))
    assert result["ips"]
    run("CHECK", plugin_conf(conflist, prevResult=result))
    run("DEL", plugin_conf(conflist, prevResult=result))
    assert cluster.endpoints(cluster.h1, cid) == []


def test_portmap_after_calico(cluster, attach):
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    bandwidth = {"type": "bandwidth", "capabilities": {"bandwidth": True}}
    conflist = cluster.calico(cluster.h1, portmap, bandwidth)
    runtime = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
               "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 10_000_000}}
    web = attach.workload(cluster.h1, "web")
    cid, result = attach.add(cluster.h1, conflist, web, runtime=runtime)
    client = attach.workload(cluster.h2, "client")
    attach.add(cluster.h2, cluster.calico(cluster.h2), client)
    # bandwidth shaped the host side that calico reported
    assert "tbf" in cluster.h1.ns.run("tc", "qdisc", "show", "dev",
                                      result["interfaces"][0]["name"]).stdout

    with web.tcp_listen(80):
        client.assert_can_ping(web.ip, retries=40)
        assert client.tcp_connect(web.ip, 80)              # direct
        assert client.tcp_connect(cluster.h1.ip, 8080)     # host port, DNAT'd by portmap
        assert not client.tcp_connect(cluster.h1.ip, 8081)
    # CHECK of calico in the chain (Debian's portmap 1.1.1 fails its own CHECK:
    # it looks for an IPv6 chain it never made).
    checked = run_calico(cluster.h1, "CHECK", plugin_conf(conflist, prevResult=result), cid,
                         web.ns.path)
    assert checked.ok, checked
    failed = cluster.chain(cluster.h1, conflist).delete(cid, web.ns.path, prev=result,
                                                        runtime=runtime)
    assert failed == []
    assert "8080" not in cluster.h1.ns.run("iptables-save", "-t", "nat").stdout


def test_bad_input_gives_the_spec_error_and_leaves_nothing(cluster, attach):
    conflist = cluster.calico(cluster.h1)
    conf = plugin_conf(conflist)
    w = attach.workload(cluster.h1, "bad")
    before = cluster.allocated()
    ok = dict(container_id="badc", netns=w.ns.path)

    assert_error(run_calico(cluster.h1, "ADD", b"{not json", **ok), 6, "not valid JSON")
    assert_error(run_calico(cluster.h1, "ADD", b"[1, 2]", **ok), 6, "JSON object")
    assert_error(run_calico(cluster.h1, "ADD", dict(conf, cniVersion="9.9.9"), **ok), 1,
                 "version 9.9.9")
    no_version = {k: v for k, v in conf.items() if k != "cniVersion"}
    assert_error(run_calico(cluster.h1, "ADD", no_version, **ok), 1, "no cniVersion")
    assert_error(run_calico(cluster.h1, "ADD", conf, **ok, env={"CNI_COMMAND": None}), 4,
                 "CNI_COMMAND")
    assert_error(run_calico(cluster.h1, "BOGUS", conf, **ok), 4, "CNI_COMMAND")
    assert_error(run_calico(cluster.h1, "ADD", conf, netns=w.ns.path), 4, "CNI_CONTAINERID")
    assert_error(run_calico(cluster.h1, "ADD", conf, container_id="badc"), 4, "CNI_NETNS")
    assert_error(run_calico(cluster.h1, "ADD", conf, **ok, ifname="a/b"), 4, "CNI_IFNAME")
    assert_error(run_calico(cluster.h1, "ADD", conf, container_id="badc", netns="/etc/hostname"),
                 4, "not a network namespace")
    assert_error(run_calico(cluster.h1, "ADD", conf, container_id="badc",
                            netns="/var/run/netns/nosuchns"), 3, "does not exist")
    assert_error(run_calico(cluster.h1, "ADD", dict(conf, mtu=70000), **ok), 7, "Invalid mtu 70000")
    assert_error(run_calico(cluster.h1, "ADD", dict(conf, mtu=1000), **ok), 7,
                 "mtu 1000 is too small for IPv6")
    assert_error(run_calico(cluster.h1, "ADD", dict(conf, ipam={"type": "host-local"}), **ok),
                 7, "host-local")
    bad_pool = dict(conf, ipam={"type": "calico-ipam", "ipv4_pools": ["10.20.0.0/33"]})
    assert_error(run_calico(cluster.h1, "ADD", bad_pool, **ok), 7, "ipv4_pools")
    # A pool that is not one, and a full pool.
    not_pool = dict(conf, ipam={"type": "calico-ipam", "ipv4_pools": ["10.77.0.0/16"]})
    assert run_calico(cluster.h1, "ADD", not_pool, **ok).output["code"] >= 100
    cluster.ipam.create_pool(pool=ipam_pb2.Pool(cidr=TINY))
    fillers = []
    while True:
        handle = f"filler/{len(fillers)}"
        try:
            cluster.ipam.auto_assign(num_ipv4=1, handle_id=handle, hostname="filler",
                                     ipv4_pools=[TINY])
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            break
        fillers.append(handle)
    try:
        full = dict(conf, ipam={"type": "calico-ipam", "ipv4_pools": [TINY]})
        assert_error(run_calico(cluster.h1, "ADD", full, **ok), 102)
    finally:
        for handle in fillers:
            cluster.ipam.release_by_handle(handle_id=handle)
        cluster.ipam.delete_pool(cidr=TINY, force=True)

    # Nothing of that allocated or created anything.
    assert cluster.allocated() == before
    assert cluster.endpoints(cluster.h1, "badc") == []
    assert w.ns.run("ip", "link", "show", "eth0", check=False).returncode != 0
    # VERSION needs nothing but CNI_COMMAND.
    version = run_calico(cluster.h1, "VERSION", {"cniVersion": "1.0.0"})
    assert version.output == {"cniVersion": "1.0.0", "supportedVersions":
                              ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_status_and_older_result_versions(cluster, attach):
    conflist = cluster.calico(cluster.h1, version="1.1.0")
    assert run_calico(cluster.h1, "STATUS", plugin_conf(conflist)).ok
    away = plugin_conf(conflist, endpoint_addr=f"unix:{cluster.lab.tmp}/nothing.sock")
    assert_error(run_calico(cluster.h1, "STATUS", away), 50, "cannot be reached")
    # (a call waits for the service up to its deadline: a short one)
    no_ipam = plugin_conf(conflist, ipam_addr=f"unix:{cluster.lab.tmp}/nothing.sock",
                          timeout=2)
    assert_error(run_calico(cluster.h1, "STATUS", no_ipam), 50, "IPAM service")
    no_pool = plugin_conf(conflist, ipam={"type": "calico-ipam", "ipv4_pools": ["10.99.0.0/16"]})
    assert_error(run_calico(cluster.h1, "STATUS", no_pool), 50, "no enabled IPv4 pool")
    # ADD against an endpoint service that is not there: try again later.
    w = attach.workload(cluster.h1, "old")
    assert_error(run_calico(cluster.h1, "ADD", away, "awayc", w.ns.path), 11)

    cid, result = attach.add(cluster.h1, cluster.calico(cluster.h1, version="0.4.0"), w)
    assert result["cniVersion"] == "0.4.0"
    assert sorted(ip["version"] for ip in result["ips"]) == ["4", "6"]


def test_calico_ipam_as_the_ipam_of_ptp(cluster, attach):
    ipam = {"type": "calico-ipam", "nodename": cluster.h1.name, "ipam_addr": cluster.lab.ipam}
    conflist = {"cniVersion": "1.0.0", "name": "ptpnet",
                "plugins": [{"type": "ptp", "ipam": ipam}]}
    before = cluster.allocated()
    p1 = attach.workload(cluster.h1, "ptp")
    cid, result = attach.add(cluster.h1, conflist, p1)
    (ip,) = result["ips"]
    assert ip["address"].endswith("/16") and ip["gateway"] == "169.254.1.1"
    assert p1.ip == ip["address"].split("/")[0]
    assert cluster.ipam.get_allocation(ip=p1.ip).handle_id == \
        f"cni1/cni-ipam/ptpnet/{cid}/eth0"
    # A calico workload on the same host reaches the ptp workload (which has
    # no profile, so only answers get through to the calico one).
    c1 = attach.workload(cluster.h1, "cal")
    attach.add(cluster.h1, cluster.calico(cluster.h1), c1)
    c1.assert_can_ping(p1.ip, retries=20)

    # The IPAM plugin alone: retried ADD, CHECK, GC, DEL, STATUS.
    direct = {"cniVersion": "1.1.0", "name": "ptpnet", "type": "ptp", "ipam": ipam}
    kw = dict(container_id=cid, netns=p1.ns.path, cni_path=CNI_PATH,
              runner=["nsenter", f"--net={cluster.h1.ns.path}"])
    plugin = str(CNI_BIN / "calico-ipam")
    again = invoke(plugin, "ADD", direct, **kw)
    assert again.ok, again
    assert again.output["ips"] == [{"address": ip["address"], "gateway": ip["gateway"]}]
    assert invoke(plugin, "CHECK", dict(direct, prevResult=result), **kw).ok
    assert invoke(plugin, "STATUS", direct, **kw).ok
    leaked = invoke(plugin, "ADD", direct, **dict(kw, container_id="leakedc"))
    assert leaked.ok, leaked
    assert cluster.allocated() == before + 4       # p1, c1 (IPv4 and IPv6), leaked
    gc = invoke(plugin, "GC", dict(direct, **{"cni.dev/valid-attachments": [
        {"containerID": cid, "ifname": "eth0"}]}), **kw)
    assert gc.ok, gc
    assert cluster.allocated() == before + 3
    assert cluster.ipam.get_allocation(ip=p1.ip).allocated
    dele = invoke(plugin, "DEL", direct, **dict(kw, container_id="leakedc"))
    assert dele.ok and dele.stdout == "", dele


# With a real runtime: containerd's `ctr run --cni` ----------------------------------------

# Runs as root inside the new mount namespace, then becomes containerd.
# $1: our folder. /etc, /opt and /var/lib become overlays whose upper layers
# are on a tmpfs (so the machine's folders are never written), and hold our
# network configuration, links to our plugins and libcni's result cache;
# /run/containerd (shim sockets) is a folder of the tmpfs.
_ENTER = """set -e
T=$1; shift
mount -t tmpfs -o mode=0700 calico-py-cni "$T/m"
for d in containerd etc/up etc/work opt/up opt/work var/up var/work; do mkdir -p "$T/m/$d"; done
mount --bind "$T/m/containerd" /run/containerd
overlay() {
    mount -t overlay calico-py-cni -o "lowerdir=$1,upperdir=$T/m/$2/up,workdir=$T/m/$2/work" "$1"
}
overlay /etc etc
overlay /opt opt
overlay /var/lib var
mkdir -p /etc/cni/net.d /opt/cni/bin
cp "$T/10-calico.conflist" /etc/cni/net.d/
ln -s "$CALICO_CNI_BIN/calico" /opt/cni/bin/calico
exec "$@"
"""

_CONTAINERD_TOML = """version = 2
root = "{t}/root"
state = "{t}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{t}/c.sock"
[ttrpc]
  address = "{t}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/opt"
"""


class Containerd:
    """A private containerd in a host's network namespace, for `ctr run --cni`."""

    def __init__(self, host, conflist: dict, namespace: str):
        self.host, self.namespace = host, namespace
        self.dir = Path(tempfile.mkdtemp(prefix="cni-ctr-", dir="/tmp"))   # short: sockets
        self.sock = self.dir / "c.sock"
        self.proc = None
        self.runs: list[subprocess.Popen] = []
        try:
            self._start(conflist)
        except BaseException:
            self.close()
            raise

    def _start(self, conflist: dict) -> None:
        (self.dir / "m").mkdir()
        # The shims' socket folder is mounted over; a machine whose containerd
        # never ran has no such folder. Made here, removed again in close().
        self.made_run_dir = not os.path.isdir("/run/containerd")
        os.makedirs("/run/containerd", exist_ok=True)
        (self.dir / "10-calico.conflist").write_text(json.dumps(conflist))
        (self.dir / "config.toml").write_text(_CONTAINERD_TOML.format(t=self.dir))
        rootfs = self.dir / "rootfs" / "bin"
        rootfs.mkdir(parents=True)
        shutil.copy("/bin/busybox", rootfs / "busybox")
        for tool in ("sh", "sleep", "ip", "ping", "cat"):
            (rootfs / tool).symlink_to("busybox")
        # nsenter, unshare and sh each exec the next: the pid is containerd's.
        self.proc = launch.spawn(
            ["nsenter", f"--net={self.host.ns.path}", "unshare", "--mount", "--propagation",
             "private", "sh", "-c", _ENTER, "sh", str(self.dir), "containerd", "--config",
             str(self.dir / "config.toml"), "--log-level", "warn"],
            self.dir / "containerd.log", env={**os.environ, "CALICO_CNI_BIN": str(CNI_BIN)})
        launch.wait_until("containerd", lambda: self.ctr("version", check=False).returncode == 0,
                          self.proc, self.dir / "containerd.log")

    def _argv(self, *args: str) -> list[str]:
        return ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", f"--net={self.host.ns.path}",
                "ctr", "--address", str(self.sock), "--namespace", self.namespace, *args]

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self._argv(*args), capture_output=True, text=True, check=check,
                              timeout=60)

    def run(self, cid: str, *command: str) -> subprocess.Popen:
        """`ctr run --cni --rm` in the foreground (in the background for us):
        it networks the container before starting it, and when the task ends
        it runs the DEL and removes the container."""
        proc = subprocess.Popen(self._argv("run", "--cni", "--rm", "--env", "PATH=/bin",
                                           "--rootfs", str(self.dir / "rootfs"), cid, *command),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.runs.append(proc)
        return proc

    def exec(self, cid: str, *command: str) -> subprocess.CompletedProcess:
        return self.ctr("task", "exec", "--exec-id", uuid.uuid4().hex[:8], cid, *command,
                        check=False)

    def close(self) -> None:
        if self.proc is not None:
            try:
                for line in self.ctr("task", "ls", "-q", check=False).stdout.split():
                    self.ctr("task", "kill", "-s", "SIGKILL", line, check=False)
                for proc in self.runs:
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            finally:
                self._kill_leftovers()
                launch.stop_pid(self.proc.pid)
        if getattr(self, "made_run_dir", False):
            with contextlib.suppress(OSError):
                os.rmdir("/run/containerd")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """What a failed run may leave: shims (they outlive containerd; each
        names our socket on its command line), container processes (in our
        containerd namespace's cgroups) and those cgroups."""
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if int(pid) != self.proc.pid and str(self.sock).encode() in cmdline:
                processes.kill(int(pid))
        folders = []
        for cgroup in Path("/sys/fs/cgroup").glob(f"*/{self.namespace}"):
            folders += sorted((p for p in cgroup.rglob("*") if p.is_dir()),
                              key=lambda p: len(p.parts), reverse=True) + [cgroup]
        for _ in range(50):             # a killed process leaves its cgroup when it is reaped
            for folder in list(folders):
                try:
                    for pid in (folder / "cgroup.procs").read_text().split():
                        processes.kill(int(pid))
                    folder.rmdir()
                    folders.remove(folder)
                except FileNotFoundError:
                    folders.remove(folder)
                except OSError:
                    pass
            if not folders:
                break
            time.sleep(0.1)


def test_ctr_run_cni(cluster):
    conflist = cluster.calico(cluster.h1, {"type": "portmap",
                                           "capabilities": {"portMappings": True}})
    del conflist["plugins"][0]["ipam"]          # the defaults: one IPv4 address
    peer = Workload(cluster.h2, f"ctrpeer{uuid.uuid4().hex[:4]}")
    peer_chain = cluster.chain(cluster.h2, cluster.calico(cluster.h2))
    peer_id = uuid.uuid4().hex
    engine = Containerd(cluster.h1, conflist, f"{cluster.lab.prefix}-ctr")
    try:
        peer_chain.add(peer_id, peer.ns.path)
        peer.refresh()
        cid = f"c{uuid.uuid4().hex[:12]}"
        run = engine.run(cid, "sleep", "300")

        def address():
            out = engine.exec(cid, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
            return out.split()[3].split("/")[0] if "inet" in out else ""
        wait_for("the container's address", lambda: run.poll() is None and address(), 30)
        ip = address()
        (ep,) = cluster.endpoints(cluster.h1, f"{engine.namespace}-{cid}")
        assert ep.ipv4_nets == [f"{ip}/32"] and ep.labels["cni.network"] == NETWORK
        ping = engine.exec(cid, "ping", "-c", "1", "-W", "2", peer.ip)
        for _ in range(20):
            if ping.returncode == 0:
                break
            time.sleep(0.5)
            ping = engine.exec(cid, "ping", "-c", "1", "-W", "2", peer.ip)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        peer.assert_can_ping(ip)

        engine.ctr("task", "kill", "-s", "SIGKILL", cid)
        run.wait(timeout=60)
        assert cluster.endpoints(cluster.h1, f"{engine.namespace}-{cid}") == []
        assert cluster.ipam.get_allocation(ip=ip).allocated is False
    finally:
        engine.close()
        peer_chain.delete(peer_id, peer.ns.path)


def test_calico_ipam_presents_the_node_certificate_its_configuration_names(cluster, attach,
                                                                          pki_dir):
    """Runtimes start plugins with their own environment: the TLS keys of the
    configuration say which certificate the plugin presents (the node's)."""
    from tests.conftest import identity_files
    node = identity_files(pki_dir, f"node:{cluster.h1.name}")
    tls = {"tls_ca_file": str(node.ca), "tls_cert_file": str(node.cert),
           "tls_key_file": str(node.key)}
    no_env = {k: None for k in ("CALICO_TLS_CA_FILE", "CALICO_TLS_CERT_FILE",
                                "CALICO_TLS_KEY_FILE")}
    no_env["CALICO_PKI_DIR"] = "/nonexistent"
    w = attach.workload(cluster.h1, "tls")
    kw = dict(container_id="tlsc", netns=w.ns.path, cni_path=CNI_PATH, env=no_env,
              runner=["nsenter", f"--net={cluster.h1.ns.path}"])
    plugin = str(CNI_BIN / "calico-ipam")
    conf = {"cniVersion": "1.0.0", "name": "tlsnet", "type": "ptp",
            "ipam": {"type": "calico-ipam", "nodename": cluster.h1.name,
                     "ipam_addr": cluster.lab.ipam, **tls}}
    added = invoke(plugin, "ADD", conf, **kw)
    assert added.ok, added
    assert cluster.ipam.get_allocation(ip=added.output["ips"][0]["address"].split("/")[0]) \
        .handle_id.startswith(f"{cluster.h1.name}/")
    assert invoke(plugin, "DEL", conf, **kw).ok
    # No certificate at all for a TCP address: refused, saying why.
    bare = dict(conf, ipam={k: v for k, v in conf["ipam"].items() if not k.startswith("tls")})
    refused = invoke(plugin, "ADD", bare, **kw)
    assert not refused.ok and refused.output["code"] == 7
    assert "without TLS" in refused.output["msg"]
    # A key naming no file is the configuration's error, named.
    wrong = dict(conf, ipam={**conf["ipam"], "tls_key_file": "/nonexistent.pem"})
    refused = invoke(plugin, "ADD", wrong, **kw)
    assert refused.output["code"] == 7 and "tls_key_file" in refused.output["msg"]
