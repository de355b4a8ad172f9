"""CNI benchmark (make bench): ADD and DEL latency of our plugin against Debian's.

One simulated host (a namespace running the endpoint service) over a private
etcd and the IPAM and policy services. Each invocation is a new process run
as a runtime runs it (``CNI_*`` variables, configuration on stdin, in the
host's namespace through ``nsenter``), timed from start to exit:

- ``calico`` (our plugin: profile ensured, asking the policy service only on
  the network's first ADD; endpoint added by the endpoint service, through
  its JSON socket), and
- Debian's reference ``ptp`` with ``host-local`` IPAM (two Go binaries: a
  veth, an address, routes; no policy, no datastore),

over 100 sequential ADDs (each into a fresh namespace; the two plugins
alternate so they see the same machine load) and then their 100 DELs, and 20
concurrent ADDs then 20 concurrent DELs per plugin. Also: VERSION (process
start-up plus the plugin's own modules, no service call) and what an ADD and
a DEL import (``python -X importtime`` of the launcher's command: the sum of
the top-level imports, and how much of it is grpc and protobuf, which the
calico plugin's ADD, DEL and CHECK should not need: they call the endpoint
service through its JSON socket). Everything it creates is removed before it
exits, also on failure.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import threading


from common import ROOT, control_plane, percentile
from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy.rpc import channel
from cni.invoke import invoke
from tools.lab import Lab, Namespace

SEQUENTIAL, CONCURRENT = 100, 20
PREFIX = "benchcni"
POOL, PTP_SUBNET = "10.150.0.0/16", "10.151.0.0/16"
CALICO = str(ROOT / "cni" / "bin" / "calico")
DEBIAN = "/usr/lib/cni"
CNI_PATH = [str(ROOT / "cni" / "bin"), DEBIAN]
# What cni/bin/calico runs, the repository given as the last argument.
LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); from cni.calico import main; main()"
IMPORT_RUNS = 5


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


def _rpc_module(name: str) -> bool:
    return name.split(".")[0] == "grpc" or name.startswith("google.protobuf")


def import_times(stderr: str) -> tuple[float, float, int]:
    """From ``-X importtime`` output: milliseconds of all top-level imports,
    of the outermost grpc and protobuf ones (wherever they were imported),
    and how many modules were imported."""
    entries = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            depth = (len(name) - len(name.lstrip()) - 1) // 2
            entries.append((depth, name.strip(), int(cumulative)))
    total = sum(us for depth, _, us in entries if depth == 0)
    # The output lists a module after what it imported; reversed, a module
    # comes before its own imports, which are the deeper lines after it.
    rpc, rpc_depth = 0, None
    for depth, name, us in reversed(entries):
        if rpc_depth is not None and depth <= rpc_depth:
            rpc_depth = None
        if rpc_depth is None and _rpc_module(name):
            rpc, rpc_depth = rpc + us, depth
    return total / 1000, rpc / 1000, len(entries)


def traced(plugin: Plugin, command: str, container_id: str, netns: str) -> tuple[float, float, int]:
    """``import_times`` of one run of ``plugin`` (the calico launcher's command
    with ``-X importtime``)."""
    runner = [*plugin.runner, sys.executable, "-X", "importtime", "-I", "-c", LAUNCH]
    out = invoke(str(ROOT), command, plugin.conf, container_id=container_id, netns=netns,
                 cni_path=CNI_PATH, runner=runner)
    if not out.ok:
        raise RuntimeError(f"traced {command} failed: {out}")
    return import_times(out.stderr)


def row(operation: str, plugin: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{operation:<22} {plugin:<16} {len(ms):>4} {percentile(ms, 50):>8.1f} "
            f"{percentile(ms, 99):>8.1f}")


def main() -> int:
    with control_plane("cni") as plane:
        tmp = plane.tmp
        with channel(plane.ipam_tcp) as ch:
            ipam_pb2_grpc.IpamServiceStub(ch).CreatePool(ipam_pb2.CreatePoolRequest(
                pool=ipam_pb2.Pool(cidr=POOL)), timeout=10)
        Lab.remove_leftovers(PREFIX)
        lab = Lab(tmp / "lab", plane.etcd_unix, plane.pki, prefix=PREFIX)
        try:
            host = lab.add_host("bench-cni")
            runner = ["nsenter", f"--net={host.ns.path}"]
            calico = Plugin("calico", CALICO, {
                "cniVersion": "1.0.0", "name": "benchcal", "type": "calico",
                "nodename": host.name, "state_dir": str(host.state_dir),
                "ipam_addr": lab.ipam, "policy_addr": lab.policy}, runner)
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
            traced_ns = Namespace(lab, f"{PREFIX}-imports")
            imports: dict[str, list] = {"ADD": [], "DEL": [], "VERSION": []}
            for i in range(IMPORT_RUNS):
                for command in imports:
                    imports[command].append(traced(calico, command, f"t{i}", traced_ns.path))
        finally:
            lab.close()
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
    print(f"imports of the calico plugin (python -X importtime, median of {IMPORT_RUNS}):")
    for command, runs in imports.items():
        total, rpc, count = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"  {command:<8} {total:6.1f} ms in {count:.0f} modules, of which grpc and "
              f"protobuf {rpc:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
