"""The Docker API proxy: ``docker run -e CALICO_IP=...`` on a node.

The engine is moved to an alternative socket (``docker.sock`` becomes
``docker.real.sock`` next to it, see ``calicoctl
restart-docker-with-alternative-unix-socket``) and the proxy serves the usual
one, relaying every call to the engine unchanged except the few that
CALICO_IP containers need (``calico_ip``). The node supervisor runs it on
every host with Docker: it also watches the engine's events, so containers
that ask for Calico are networked, re-instated and released even when their
start or removal did not pass through it. Modules: ``http1`` (relaying HTTP),
``proxy`` (the server and its routes), ``calico_ip`` (what Calico does for a
container), ``watcher`` (events and periodic reconciliation), ``services``
(the gRPC clients it uses); ``__main__`` puts them together.
"""

from __future__ import annotations
