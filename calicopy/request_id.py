"""The id of the request a process is handling, and how it travels.

Made at the edge (calicoctl, the Docker plugin, the CALICO_IP proxy, the CNI
plugin: ``new``), held in a context variable while the request is handled
(``request``), sent on to the next process in gRPC metadata (``METADATA_KEY``)
or as an HTTP header on the endpoint service's JSON socket (``HTTP_HEADER``),
and logged with every line logged meanwhile (calicopy.logs). Standard
library only: the CNI plugin imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

METADATA_KEY = "x-calico-request-id"
HTTP_HEADER = "X-Calico-Request-Id"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def new() -> str:
    """A fresh id for a request entering calico-py (16 hex digits)."""
    return os.urandom(8).hex()


def current() -> str:
    """The id of the request being handled ("" outside any)."""
    return _current.get()


def valid(text: str | None) -> str:
    """``text`` if it can be logged as it is (1-64 letters, digits, '-', '_',
    '.'), else "": an id from outside is never trusted to shape a log line."""
    if text and len(text) <= 64 and all(c.isalnum() or c in "-_." for c in text):
        return text
    return ""


@contextlib.contextmanager
def request(request_id: str | None = None):
    """Handle a request under ``request_id`` (a new one if None, empty or
    not a valid id)."""
    token = _current.set(valid(request_id) or new())
    try:
        yield _current.get()
    finally:
        _current.reset(token)
