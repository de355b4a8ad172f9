"""CNI benchmark (make bench): ADD, CHECK and DEL latency of our plugin against Debian's.

One simulated host (a namespace running the endpoint service) over a private
etcd and the IPAM and policy services. Each invocation is a new process run
as a runtime runs it (``CNI_*`` variables, configuration on stdin, in the
host's namespace through ``nsenter``), timed from start to exit:

- ``calico`` (our plugin: ``cni/bin/calico`` starts ``cni.thin``, which
  hands ADD, CHECK and DEL to the node's endpoint service on its CNI socket;
  the service runs the plugin's code: profile ensured, endpoint added; the
  network's first ADD runs in the plugin's process, which creates the
  profile over gRPC), and
- Debian's reference ``ptp`` with ``host-local`` IPAM (two Go binaries: a
  veth, an address, routes; no policy, no datastore),

over 100 sequential ADDs (each into a fresh namespace; the two plugins
alternate so they see the same machine load), then a CHECK of each (with the
ADD's result as prevResult), then their 100 DELs, and 20 concurrent ADDs,
CHECKs and DELs per plugin. The aim: calico's p50 at most ptp's (stretch),
2x in any case. Also: VERSION (process start-up, no service call), the
interpreter's own start-up with nothing imported (``python -S -I -c pass``,
the floor of any Python plugin), and what the launcher's process imports
(``python -X importtime`` of its command: the sum of the top-level imports),
next to what the whole plugin imports when it runs in its own process (as
before the CNI socket; still so for STATUS and a network's first ADD).
Everything it creates is removed before it exits, also on failure.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import threading
import time


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
# What cni/bin/calico runs (cni.thin), and what cni.thin runs when the whole
# plugin runs in its process; the repository is given as the last argument.
THIN = ("-S", "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
        "from cni.thin import main; main()")
WHOLE = ("-I", "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from cni.calico import main; main()")
IMPORT_RUNS = 5
COMMANDS = ("ADD", "CHECK", "DEL")


class Plugin:
    def __init__(self, name: str, path: str, conf: dict, runner: list[str]):
        self.name, self.path, self.conf, self.runner = name, path, conf, runner

    def __call__(self, command: str, container_id: str = "", netns: str = "",
                 prev: dict | None = None):
        """Outcome of one run (``prev``: the ADD's result, for CHECK)."""
        conf = self.conf if prev is None else dict(self.conf, prevResult=prev)
        out = invoke(self.path, command, conf, container_id=container_id, netns=netns,
                     cni_path=CNI_PATH, runner=self.runner)
        if not out.ok:
            raise RuntimeError(f"{self.name} {command} failed: {out}")
        return out


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


def traced(plugin: Plugin, how: tuple, command: str, container_id: str, netns: str,
           prev: dict | None = None) -> tuple[float, float, int]:
    """``import_times`` of one run of ``plugin`` (``how``: THIN or WHOLE,
    run with ``-X importtime``)."""
    runner = [*plugin.runner, sys.executable, "-X", "importtime", *how]
    conf = plugin.conf if prev is None else dict(plugin.conf, prevResult=prev)
    out = invoke(str(ROOT), command, conf, container_id=container_id, netns=netns,
                 cni_path=CNI_PATH, runner=runner)
    if not out.ok:
        raise RuntimeError(f"traced {command} failed: {out}")
    return import_times(out.stderr)


def floor(runner: list[str]) -> float:
    """Seconds to start the interpreter with nothing imported, as a plugin is."""
    start = time.perf_counter()
    subprocess.run([*runner, sys.executable, "-S", "-I", "-c", "pass"], check=True)
    return time.perf_counter() - start


def row(operation: str, plugin: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{operation:<22} {plugin:<20} {len(ms):>4} {percentile(ms, 50):>8.1f} "
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

            for p in plugins:                                   # warm-up
                ns = spaces[p.name].pop()
                p("ADD", "warm", ns.path)
                p("DEL", "warm", ns.path)
            times: dict[tuple[str, str], list[float]] = {}
            results: dict[tuple[str, int], dict] = {}
            for command in COMMANDS:
                for i in range(SEQUENTIAL):
                    for p in plugins:
                        out = p(command, f"s{i}", spaces[p.name][i].path,
                                results.get((p.name, i)) if command == "CHECK" else None)
                        times.setdefault((f"sequential {command}", p.name), []).append(
                            out.seconds)
                        if command == "ADD":
                            results[(p.name, i)] = out.output
            for command in COMMANDS:
                for p in plugins:
                    batch = [(i, spaces[p.name][i]) for i in
                             range(SEQUENTIAL, SEQUENTIAL + CONCURRENT)]

                    def one(item, p=p, command=command):
                        i, ns = item
                        out = p(command, f"c{i}", ns.path,
                                results.get((p.name, i)) if command == "CHECK" else None)
                        if command == "ADD":
                            results[(p.name, i)] = out.output
                        return out.seconds
                    times[(f"{CONCURRENT} concurrent {command}", p.name)] = concurrently(
                        one, batch)
            version = {p.name: [p("VERSION").seconds for _ in range(20)] for p in plugins}
            version["python -S -I -c pass"] = [floor(runner) for _ in range(20)]
            traced_ns = Namespace(lab, f"{PREFIX}-imports")
            imports: dict[str, list] = {}
            for i in range(IMPORT_RUNS):
                added = calico("ADD", f"t{i}", traced_ns.path).output
                for label, how, command, prev in (
                        ("ADD", THIN, "ADD", None), ("CHECK", THIN, "CHECK", added),
                        ("DEL", THIN, "DEL", None), ("VERSION", THIN, "VERSION", None),
                        ("ADD, whole", WHOLE, "ADD", None), ("DEL, whole", WHOLE, "DEL", None)):
                    imports.setdefault(label, []).append(
                        traced(calico, how, command, f"t{i}", traced_ns.path, prev))
        finally:
            lab.close()
            shutil.rmtree(tmp / "host-local", ignore_errors=True)

    print("CNI plugin latency: process start to exit, one simulated host (endpoint service, "
          "no policy agent), real kernel")
    print(f"{'operation':<22} {'plugin':<20} {'n':>4} {'p50 ms':>8} {'p99 ms':>8}")
    for (operation, name), values in times.items():
        print(row(operation, name, values))
    for name, values in version.items():
        print(row("VERSION (start-up)" if name != "python -S -I -c pass" else "start-up floor",
                  name, values))
    print("calico / ptp+host-local at p50 (aim: <= 1.0, at most 2.0):")
    for (operation, name), values in times.items():
        if name == "calico":
            ours, theirs = percentile(values, 50), percentile(times[(operation, "ptp+host-local")],
                                                               50)
            print(f"  {operation:<22} {ours * 1000:7.1f} ms / {theirs * 1000:7.1f} ms = "
                  f"{ours / theirs:4.2f}x")
    ours, theirs = (percentile(version[n], 50) for n in ("calico", "ptp+host-local"))
    print(f"  {'VERSION':<22} {ours * 1000:7.1f} ms / {theirs * 1000:7.1f} ms = "
          f"{ours / theirs:4.2f}x")
    print(f"imports of the calico plugin's process (python -X importtime, median of "
          f"{IMPORT_RUNS}; 'whole': the plugin run in its own process):")
    for command, runs in imports.items():
        total, rpc, count = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"  {command:<11} {total:6.1f} ms in {count:3.0f} modules, of which grpc and "
              f"protobuf {rpc:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
