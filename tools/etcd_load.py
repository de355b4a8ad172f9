"""A load generator for etcd itself: the benchmark's baseline for IPAM.

    python -m tools.etcd_load <ENDPOINT> <PREFIX> <COUNT> <BLOCK_BYTES> <HANDLE_BYTES>

Does what one IPAM allocation does to etcd, without IPAM: one transaction
that compares a block's revision, a pool's revision and a handle's absence,
and writes the block (BLOCK_BYTES) and the new handle (HANDLE_BYTES). Each
client writes its own block under PREFIX (no contention between clients),
COUNT times, through a bare gRPC stub of etcd's KV service with the TLS files
and identity the environment gives (ETCD_CA_CERT_FILE, ETCD_CERT_FILE,
ETCD_KEY_FILE; https:// endpoint), so that what is measured is etcd and the
least a client can do. Prints "ready", waits for a line on stdin, then prints
one JSON object: per-transaction latencies (seconds) and when it started and
finished (time.time()).
"""

from __future__ import annotations

import json
import sys
import time

import grpc
from pyetcd import etcdrpc

from calicopy import config
from calicopy.tls import channel_credentials


def _channel(endpoint: str) -> grpc.Channel:
    member = config.parse_endpoints(endpoint)[0]
    target = f"{member.host}:{member.port}"
    if not member.tls:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, channel_credentials(config.etcd_tls_files()))


def _txn(block: bytes, handle: bytes, block_rev: int, pool_key: bytes, pool_rev: int,
         handle_key: bytes, block_value: bytes, handle_value: bytes) -> etcdrpc.TxnRequest:
    block_cmp = etcdrpc.Compare(key=block, result=etcdrpc.Compare.EQUAL,
                                target=etcdrpc.Compare.VERSION, version=0) if not block_rev \
        else etcdrpc.Compare(key=block, result=etcdrpc.Compare.EQUAL,
                             target=etcdrpc.Compare.MOD, mod_revision=block_rev)
    return etcdrpc.TxnRequest(compare=[
        block_cmp,
        etcdrpc.Compare(key=pool_key, result=etcdrpc.Compare.EQUAL,
                        target=etcdrpc.Compare.MOD, mod_revision=pool_rev),
        etcdrpc.Compare(key=handle_key, result=etcdrpc.Compare.EQUAL,
                        target=etcdrpc.Compare.VERSION, version=0)],
        success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=block, value=block_value)),
                 etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=handle,
                                                                  value=handle_value))])


def run(endpoint: str, prefix: str, count: int, block_bytes: int, handle_bytes: int,
        ready=lambda: None) -> dict:
    channel = _channel(endpoint)
    kv = etcdrpc.KVStub(channel)
    pool_key = f"{prefix}pool".encode()
    pool_rev = kv.Put(etcdrpc.PutRequest(key=pool_key, value=b"{}"), timeout=10).header.revision
    block = f"{prefix}block".encode()
    block_value, handle_value = b"b" * block_bytes, b"h" * handle_bytes
    latencies, block_rev = [], 0
    ready()
    started = time.time()
    for n in range(count):
        handle = f"{prefix}handle-{n}".encode()
        request = _txn(block, handle, block_rev, pool_key, pool_rev, handle, block_value,
                       handle_value)
        start = time.perf_counter()
        response = kv.Txn(request, timeout=30)
        latencies.append(time.perf_counter() - start)
        if not response.succeeded:
            raise SystemExit(f"transaction {n} of {prefix} failed its compares")
        block_rev = response.header.revision
    finished = time.time()
    channel.close()
    return {"latencies": latencies, "started": started, "finished": finished}


def _wait_for_go() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    endpoint, prefix, count, block_bytes, handle_bytes = sys.argv[1:6]
    print(json.dumps(run(endpoint, prefix, int(count), int(block_bytes), int(handle_bytes),
                         ready=_wait_for_go)))
