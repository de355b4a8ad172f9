"""Each service's API as Python callers see it: the one mapping between its
proto messages and calicopy.model records, and typed clients over
calicopy.rpc.Client. The servicers use the same mappings, so a field added to
a message is mapped in exactly one place.
"""
