"""The records several processes read and write: their values, JSON forms and validation.

One module per record family (``endpoint``, ``policy``, ``ipam``, ``bgp``).
Where each record lives in etcd is ``calicopy.datastore.keys``; what the
services do with the records (allocation, endpoint life cycle, registry
operations) stays in ``services/<name>/``. Nothing here talks to gRPC or the
kernel.
"""
