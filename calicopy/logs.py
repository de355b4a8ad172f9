"""One log format for every calico-py process, and the request id it carries.

``setup(component, node)`` is what every process's composition root calls
first: one line per record on stderr, either key=value (``kv``, the default:
``time=... level=info component=endpoint node=host1 logger=... request_id=...
msg="..."``; values with spaces, quotes or ``=`` are quoted and escaped as
JSON strings) or one JSON object per line (``json``), chosen by
CALICO_LOG_FORMAT. Every line names the component and node; a line logged
while handling a request names the request too.

The request id (calicopy.request_id) is made at the edge, sent on in gRPC
metadata (calicopy.rpc's Client sends it, its server interceptor takes it)
or the endpoint service's JSON socket's header. A server given none makes
one, so every call it logs has one. The endpoint
service logs the endpoint id each add made, with the request's id, and the
policy agent logs the endpoint ids it programmed: the endpoint id leads from
the one to the other (README: "Following a request").
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from calicopy import request_id

FORMATS = ("kv", "json")

# What the rest of calico-py uses through this module.
METADATA_KEY, HTTP_HEADER = request_id.METADATA_KEY, request_id.HTTP_HEADER
new_request_id, current_request_id = request_id.new, request_id.current
request = request_id.request


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\\\n\t') and value.isprintable():
        return value
    return json.dumps(value)


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, component: str, node: str):
        super().__init__()
        self.kind, self.component, self.node = fmt, component, node

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = {"time": f"{stamp}.{int(record.msecs):03d}Z",
                  "level": record.levelname.lower(), "component": self.component}
        if self.node:
            fields["node"] = self.node
        fields["logger"] = record.name
        rid = request_id.current()
        if rid:
            fields["request_id"] = rid
        fields["msg"] = record.getMessage()
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return fields

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        if self.kind == "json":
            return json.dumps(fields)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def log_format(environ=None) -> str:
    """CALICO_LOG_FORMAT, checked: kv (default) or json."""
    from calicopy import config
    return config.LOG_FORMAT.resolve(environ=environ)


def setup(component: str, node: str = "", stream=None, fmt: str | None = None) -> None:
    """Every process's logging: level INFO, one line per record on
    ``stream`` (stderr) in CALICO_LOG_FORMAT. A bad CALICO_LOG_FORMAT is
    reported once, on stderr, and kv used: logs never stop a process."""
    if fmt is None:
        try:
            fmt = log_format()
        except ValueError as exc:
            print(exc, file=sys.stderr)
            fmt = "kv"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(fmt, component, node or os.environ.get(
        "CALICO_NODENAME", "")))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def parse_kv(line: str) -> dict[str, str]:
    """One kv line back into its fields (for tests and tools)."""
    fields, i = {}, 0
    line = line.rstrip("\n")
    while i < len(line):
        eq = line.index("=", i)
        key = line[i:eq]
        if eq + 1 < len(line) and line[eq + 1] == '"':
            value, end = json.JSONDecoder().raw_decode(line, eq + 1)
        else:
            end = line.find(" ", eq + 1)
            end = len(line) if end < 0 else end
            value = line[eq + 1:end]
        fields[key] = value
        i = end + 1
    return fields
