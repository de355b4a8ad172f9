"""The calico-py gRPC services: ipam, and later endpoint, policy and bgp."""
