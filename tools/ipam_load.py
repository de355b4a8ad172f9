"""A load generator for the IPAM service, shared by the concurrency test and
the benchmark. Run as a process per client so that clients truly run in
parallel:

    python -m tools.ipam_load <ADDR> <HOSTNAME> <HANDLE> [<MAX>]

Once connected it prints "ready" and waits for a line on stdin, so that a
driver can start all clients together after their (slow) interpreter start.
It then calls AutoAssign for one IPv4 address at a time, each with its own
handle (<HANDLE>-<n>), until the pools are exhausted or MAX addresses are
held, and prints one JSON object: the addresses, per-call latencies in
seconds, how many calls were retried after ABORTED, the final status code,
and when it started and finished (time.time()).
"""

from __future__ import annotations

import json
import sys
import time

import grpc

from calico.ipam.v1 import ipam_pb2, ipam_pb2_grpc
from calicopy import rpc


def allocate_until(addr: str, host: str, handle: str, limit: int | None = None,
                   ready=lambda: None) -> dict:
    ips, latencies, retries, final = [], [], 0, "OK"
    with rpc.channel(addr) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        stub = ipam_pb2_grpc.IpamServiceStub(ch)
        ready()
        started = time.time()
        while limit is None or len(ips) < limit:
            request = ipam_pb2.AutoAssignRequest(
                num_ipv4=1, handle_id=f"{handle}-{len(ips)}", hostname=host)
            start = time.perf_counter()
            try:
                resp = stub.AutoAssign(request, timeout=30)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.ABORTED:
                    retries += 1
                    continue
                final = exc.code().name
                break
            latencies.append(time.perf_counter() - start)
            ips.extend(resp.ipv4)
    return {"ips": ips, "latencies": latencies, "retries": retries, "final": final,
            "started": started, "finished": time.time()}


def _wait_for_go() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    print(json.dumps(allocate_until(sys.argv[1], sys.argv[2], sys.argv[3], limit,
                                    ready=_wait_for_go)))
