"""CNI benchmark (make bench): ADD and DEL latency of our plugin against Debian's.

One simulated host (a namespace running the endpoint service) over a private
etcd and the IPAM and policy services. Each invocation is a new process run
as a runtime runs it (``CNI_*`` variables, configuration on stdin, in the
host's namespace through ``nsenter``), timed from start to exit:

- ``calico`` (our plugin: profile ensured, endpoint added by the endpoint
  service), and
- Debian's reference ``ptp`` with ``host-local`` IPAM (two Go binaries: a
  veth, an address, routes; no policy, no datastore),

over 100 sequential ADDs (each into a fresh namespace; the two plugins
alternate so they see the same machine load) and then their 100 DELs, and 20
concurrent ADDs then 20 concurrent DELs per plugin. Also: VERSION (process
start-up plus the plugin's own modules, no service call) and the import cost
of an ADD (grpc and the generated messages, which VERSION does not load). Everything it creates is
removed before it exits, also on failure.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import threading

import grpc

from common import ROOT, control_plane, percentile
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from cni.invoke import invoke
from tools import launch
from tools.lab import Lab, Namespace

SEQUENTIAL, CONCURRENT = 100, 20
PREFIX = "benchcni"
POOL, PTP_SUBNET = "10.150.0.0/16", "10.151.0.0/16"
CALICO = str(ROOT / "cni" / "bin" / "calico")
DEBIAN = "/usr/lib/cni"
CNI_PATH = [str(ROOT / "cni" / "bin"), DEBIAN]
# What an ADD of the calico plugin imports beyond its own modules.
ADD_IMPORTS = ("import grpc, cni.calico, cni.rpc, calicopy.config, services.endpoint.netns; "
               "import calico.endpoint.v1.endpoint_pb2_grpc, calico.policy.v1.policy_pb2_grpc")


class Plugin:
    def __init__(self, name: str, path: str, conf: dict, runner: list[str]):
        self.name, self.path, self.conf, self.runner = name, path, conf, runner

    def __call__(self, command: str, container_id: str = "", netns: str = "") -> float:
        out = invoke(self.path, command, self.conf, container_id=container_id, netns=netns,
                     cni_path=CNI_PATH, runner=self.runner)
        if not out.ok:
            raise RuntimeError(f"{self.name} {command} failed: {out}")
        return out.seconds


def concurrently(fn, items) -> list[float]:
    results, errors = [], []

    def one(item):
        try:
            results.append(fn(item))
        except Exception as exc:    # reported below
            errors.append(exc)
    threads = [threading.Thread(target=one, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def import_cost(runs: int = 7) -> float:
    """Milliseconds the imports of an ADD take in a fresh interpreter (as the
    plugin's launcher runs it), median of ``runs``."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); t = time.perf_counter(); "
            f"{ADD_IMPORTS}; print(time.perf_counter() - t)")
    return statistics.median(
        float(subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                             check=True).stdout) * 1000 for _ in range(runs))


def row(operation: str, plugin: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{operation:<22} {plugin:<16} {len(ms):>4} {percentile(ms, 50):>8.1f} "
            f"{percentile(ms, 99):>8.1f}")


def main() -> int:
    with control_plane("cni") as (tmp, etcd_tcp, etcd_unix, ipam_tcp, ipam_unix):
        policy_tcp, policy_unix = f"127.0.0.1:{launch.free_port()}", f"unix:{tmp}/policy.sock"
        policy = launch.start_service("services.policy", policy_tcp, etcd_tcp,
                                      tmp / "policy.log", unix=policy_unix)
        with grpc.insecure_channel(ipam_tcp) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr=POOL)), timeout=10)
        Lab.remove_leftovers(PREFIX)
        lab = Lab(tmp / "lab", etcd_unix, ipam_unix, prefix=PREFIX, policy=policy_unix)
        try:
            host = lab.add_host("bench-cni")
            runner = ["nsenter", f"--net={host.ns.path}"]
            calico = Plugin("calico", CALICO, {
                "cniVersion": "1.0.0", "name": "benchcal", "type": "calico",
                "nodename": host.name, "state_dir": str(host.state_dir),
                "ipam_addr": ipam_unix, "policy_addr": policy_unix}, runner)
            ptp = Plugin("ptp+host-local", f"{DEBIAN}/ptp", {
                "cniVersion": "1.0.0", "name": "benchptp", "type": "ptp",
                "ipam": {"type": "host-local", "subnet": PTP_SUBNET,
                         "dataDir": str(tmp / "host-local")}}, runner)
            plugins = (calico, ptp)
            spaces = {p.name: [Namespace(lab, f"{PREFIX}-{p.name[0]}{i}")
                               for i in range(SEQUENTIAL + CONCURRENT + 1)] for p in plugins}
            times: dict[tuple[str, str], list[float]] = {}

            for p in plugins:                                   # warm-up
                ns = spaces[p.name].pop()
                p("ADD", "warm", ns.path)
                p("DEL", "warm", ns.path)
            for command in ("ADD", "DEL"):
                for i in range(SEQUENTIAL):
                    for p in plugins:
                        times.setdefault((f"sequential {command}", p.name), []).append(
                            p(command, f"s{i}", spaces[p.name][i].path))
            for command in ("ADD", "DEL"):
                for p in plugins:
                    batch = list(enumerate(spaces[p.name][SEQUENTIAL:SEQUENTIAL + CONCURRENT]))
                    times[(f"{CONCURRENT} concurrent {command}", p.name)] = concurrently(
                        lambda item, p=p: p(command, f"c{item[0]}", item[1].path), batch)
            version = {p.name: [p("VERSION") for _ in range(20)] for p in plugins}
            imports = import_cost()
        finally:
            lab.close()
            launch.stop_pid(policy.pid)
            shutil.rmtree(tmp / "host-local", ignore_errors=True)

    print("CNI plugin latency: process start to exit, one simulated host (endpoint service, "
          "no policy agent), real kernel")
    print(f"{'operation':<22} {'plugin':<16} {'n':>4} {'p50 ms':>8} {'p99 ms':>8}")
    for (operation, name), values in times.items():
        print(row(operation, name, values))
    for name, values in version.items():
        print(row("VERSION (start-up)", name, values))
    ratios = []
    for (operation, name), values in times.items():
        if name == "calico":
            other = times[(operation, "ptp+host-local")]
            ratios.append(f"{operation} {percentile(values, 50) / percentile(other, 50):.1f}x")
    print("calico / ptp+host-local at p50: " + ", ".join(ratios))
    print(f"imports of a calico ADD beyond VERSION's (grpc, messages, config): "
          f"{imports:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
