"""calicoctl: the command-line client of the calico-py services."""

import os

# gRPC's own log (e.g. a refused TLS handshake, at INFO) would add lines to
# our one-line messages; the command says what went wrong itself.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
