"""CNI plugins of calico-py: ``calico`` (interfaces) and ``calico-ipam`` (addresses).

Both are thin clients: ``calico`` asks this node's endpoint service for an
endpoint (veth, addresses, routes, policy), ``calico-ipam`` asks the IPAM
service for addresses. Neither touches the kernel or etcd itself.

Start-up cost matters (a runtime starts one process per command), so modules
here import only the standard library at the top, and this package's
``__init__`` nothing at all. What ``cni/bin/calico`` starts is ``cni.thin``,
which imports only what is built into the interpreter and forwards ADD, DEL,
CHECK and GC to the node's endpoint service, which runs ``calico``'s code on
them. Run in the plugin's own process (``cni.calico.main``), ``calico``'s
ADD, DEL and CHECK reach the endpoint service through its JSON socket and
import neither grpc nor protobuf; grpc and the generated messages are
imported only by the commands that call a gRPC service (STATUS,
``calico-ipam``, and an ADD whose profile this node has not seen confirmed
lately: ``cni/profiles.py``).
"""
