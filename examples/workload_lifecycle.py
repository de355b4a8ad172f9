"""A scheduler's view of calico-py: one workload's life cycle over gRPC.

Run on a host where `calicoctl node` runs (as root, from the repository, with
the venv's Python), for a network namespace the "scheduler" created, with a
scheduler's certificate (`calicoctl certs issue scheduler:example`):

    ip netns add demo-wl
    export CALICO_TLS_CA_FILE=/etc/calico-py/pki/ca.pem \
           CALICO_TLS_CERT_FILE=/etc/calico-py/pki/scheduler-example.pem \
           CALICO_TLS_KEY_FILE=/etc/calico-py/pki/scheduler-example-key.pem
    .venv/bin/python examples/workload_lifecycle.py --netns=/var/run/netns/demo-wl

The node's endpoint service is on a unix socket (only root can open it); the
policy service is on TCP, where every call is mutual TLS: the client presents
its certificate, whose identity (scheduler:example) the service authorises.

It makes sure a profile exists, adds the workload (and shows that a retried
add is harmless), lists the node's endpoints, moves the workload to another
profile, and removes it. See docs/api.md for the contract.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from calico.endpoint.v1 import endpoint_pb2, endpoint_pb2_grpc
from calico.policy.v1 import policy_pb2, policy_pb2_grpc
from calicopy import config

DEADLINE = 10.0     # seconds; every call gets one


def channel(addrs: list[str]) -> grpc.Channel:
    """A unix socket as it is; TCP with mutual TLS, presenting the certificate
    CALICO_TLS_CERT_FILE names. Several addresses (a service's replicas, here
    IPv4 ip:port) make one channel that spreads calls over the replicas that
    answer; TLS then checks each against the first one's host."""
    if addrs[0].startswith("unix:"):
        return grpc.insecure_channel(addrs[0])
    ca, cert, key = (open(os.environ[f"CALICO_TLS_{part}_FILE"], "rb").read()
                     for part in ("CA", "CERT", "KEY"))
    target, options = addrs[0], []
    if len(addrs) > 1:
        target = "ipv4:" + ",".join(addrs)
        options = [("grpc.lb_policy_name", "round_robin"),
                   ("grpc.ssl_target_name_override", addrs[0].rpartition(":")[0])]
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert), options=options)


def ensure_profile(policy, name: str) -> None:
    try:
        policy.CreateProfile(policy_pb2.CreateProfileRequest(name=name), timeout=DEADLINE)
        print(f"created profile {name}")
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", required=True, help="path of the workload's namespace")
    parser.add_argument("--workload", default="example-1", help="the workload's id")
    parser.add_argument("--profile", default="example", help="profile to put it in")
    args = parser.parse_args()

    with channel([config.endpoint_addr()]) as ep_channel, \
            channel(config.POLICY_ADDR.resolve()) as policy_channel:
        endpoints = endpoint_pb2_grpc.EndpointServiceStub(ep_channel)
        policy = policy_pb2_grpc.PolicyServiceStub(policy_channel)
        node = endpoints.GetNodeInfo(endpoint_pb2.GetNodeInfoRequest(), timeout=DEADLINE)
        print(f"node {node.node}: IPv4 {node.ipv4}, IPv6 {node.ipv6}")
        ensure_profile(policy, args.profile)

        # Start: (orchestrator, workload_id, interface) is the idempotency key.
        request = endpoint_pb2.AddEndpointRequest(
            orchestrator="example", workload_id=args.workload, netns_path=args.netns,
            interface_name="eth0", auto_ipv4=1, auto_ipv6=1 if node.ipv6 else 0,
            profile_ids=[args.profile])
        ep = endpoints.AddEndpoint(request, timeout=DEADLINE).endpoint
        print(f"added {ep.endpoint_id}: {', '.join(list(ep.ipv4_nets) + list(ep.ipv6_nets))} "
              f"via {ep.host_interface}, gateway {ep.ipv4_gateway}")
        # A retry (say the first answer was lost to a deadline) returns the same endpoint.
        again = endpoints.AddEndpoint(request, timeout=DEADLINE).endpoint
        print(f"retried add: same endpoint {again.endpoint_id == ep.endpoint_id}, "
              f"same addresses {list(again.ipv4_nets) == list(ep.ipv4_nets)}")

        listed = endpoints.ListEndpoints(endpoint_pb2.ListEndpointsRequest(
            orchestrator="example"), timeout=DEADLINE).endpoints
        print(f"{len(listed)} endpoint(s) of orchestrator 'example' on this node")

        ensure_profile(policy, args.profile + "_2")
        moved = endpoints.SetProfiles(endpoint_pb2.SetProfilesRequest(
            endpoint_id=ep.endpoint_id, profile_ids=[args.profile + "_2"]), timeout=DEADLINE)
        print(f"profiles now {list(moved.endpoint.profile_ids)}")

        # Stop: releases the addresses. NOT_FOUND means it is already gone.
        removed = endpoints.RemoveEndpoint(endpoint_pb2.RemoveEndpointRequest(
            orchestrator="example", workload_id=args.workload), timeout=DEADLINE)
        print(f"removed {len(removed.removed)} endpoint(s)")
        try:
            endpoints.RemoveEndpoint(endpoint_pb2.RemoveEndpointRequest(
                orchestrator="example", workload_id=args.workload), timeout=DEADLINE)
        except grpc.RpcError as exc:
            print(f"removing again: {exc.code().name} (nothing left to do)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
