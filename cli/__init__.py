"""calicoctl: the command-line client of the calico-py services."""
