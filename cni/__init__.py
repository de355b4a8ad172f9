"""CNI plugins of calico-py: ``calico`` (interfaces) and ``calico-ipam`` (addresses).

Both are thin clients: ``calico`` asks this node's endpoint service for an
endpoint (veth, addresses, routes, policy), ``calico-ipam`` asks the IPAM
service for addresses. Neither touches the kernel or etcd itself.

Start-up cost matters (a runtime starts one process per command), so modules
here import only the standard library at the top; grpc and the generated
messages are imported by the commands that call a service.
"""
