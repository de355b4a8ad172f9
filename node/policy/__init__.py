"""The policy agent: programs iptables and ipsets on one node from etcd."""
