"""The calico-py gRPC services, one subpackage each: ``ipam`` (pools, block
allocation), ``policy`` (profiles, tags, rules, explain), ``bgp`` (nodes,
peers, BGP settings) and ``endpoint`` (one per node: workload interfaces,
addresses and routes).

Each service's domain logic lives in its own folder and nothing outside it
imports it (launching a service by module name is fine): the records several
processes share live in calicopy.model, their proto mappings and clients in
calicopy.api.
"""
