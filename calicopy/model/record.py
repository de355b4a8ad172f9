"""What a malformed record is, and the one way readers decode a record.

Every record family's ``from_json`` (calicopy.model.*) checks the shape of
what it reads and raises ``RecordError`` saying what is wrong ("field
'ipv4_nets' holds 'bogus/32', not an IPv4 network"); ``decode`` adds the key,
turning any failure into ``BadRecord``. The rule every reader follows, as the
original system did: a malformed record is treated as absent and reported
(calicopy.quarantine), never fatal.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, TypeVar

from calicopy.datastore.store import KV
from calicopy.errors import FailedPrecondition

T = TypeVar("T")


class RecordError(ValueError):
    """A record's JSON does not have the shape its family needs."""


class BadRecord(FailedPrecondition):
    """The record at ``key`` cannot be read; ``why`` says what is wrong with it."""

    def __init__(self, key: str, why: str):
        why = why.rstrip(".")
        super().__init__(f"Malformed record {key}: {why}.")
        self.key, self.why = key, why


def decode(kv: KV, parse: Callable[[Any], T]) -> T:
    """``parse`` (a family's from_json) of ``kv``'s JSON, or BadRecord."""
    try:
        data = kv.json()
    except ValueError:
        raise BadRecord(kv.key, f"not JSON: {kv.value[:60]!r}") from None
    try:
        return parse(data)
    except BadRecord:
        raise
    except RecordError as exc:
        raise BadRecord(kv.key, str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A check a family's from_json missed: still named, still not fatal.
        raise BadRecord(kv.key, f"{type(exc).__name__}: {exc}") from None


def decode_all(kvs: Iterable[KV], parse: Callable[[Any], T], bad: dict[str, str] | None
               ) -> list[T]:
    """Decode every record, leaving out the malformed ones (recorded in
    ``bad``, key -> what is wrong, when given)."""
    found = []
    for kv in kvs:
        try:
            found.append(decode(kv, parse))
        except BadRecord as exc:
            if bad is not None:
                bad[exc.key] = exc.why
    return found


# Field checks for the families' from_json -------------------------------------

_MISSING = object()


def field(data: Any, name: str, kind: type | tuple, default: Any = _MISSING) -> Any:
    """``data[name]``, which must be of ``kind``; ``default`` when absent (if given)."""
    if not isinstance(data, dict):
        raise RecordError(f"a JSON object was expected, not {type(data).__name__}")
    value = data.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise RecordError(f"field '{name}' is missing")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise RecordError(f"field '{name}' holds {value!r}, not a {wanted}")
    return value


def strings(data: Any, name: str) -> list[str]:
    """A list of strings (empty when absent)."""
    value = field(data, name, list, [])
    if not all(isinstance(v, str) for v in value):
        raise RecordError(f"field '{name}' holds {value!r}, not a list of strings")
    return list(value)


def nets(data: Any, name: str, version: int) -> list[str]:
    """A list of IPv4 or IPv6 networks in CIDR form (empty when absent)."""
    value = strings(data, name)
    for text in value:
        try:
            net = ipaddress.ip_network(text)
        except ValueError:
            net = None
        if net is None or net.version != version:
            raise RecordError(f"field '{name}' holds {text!r}, not an IPv{version} network")
    return value


def address(text: str, name: str, version: int | None = None, optional: bool = False) -> str:
    """An IP address (of ``version``), or "" when ``optional``."""
    if optional and text == "":
        return text
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is None or (version and ip.version != version):
        what = f"an IPv{version} address" if version else "an IP address"
        raise RecordError(f"field '{name}' holds {text!r}, not {what}")
    return text
