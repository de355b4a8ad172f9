"""The IPAM service: pools, host-affine blocks and address allocation."""
