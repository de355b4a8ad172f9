"""The Docker plugin: a libnetwork remote network driver ("calico") and IPAM
driver ("calico-ipam") on one unix socket, as thin clients of the endpoint,
IPAM and policy services."""
