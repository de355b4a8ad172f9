"""The per-node endpoint service: workload interfaces, addresses and routes."""
