"""Code shared by every calico-py process: datastore access, config, RPC plumbing."""
