"""RFC 9110 range and conditional request evaluation, as pure functions.

The view hands :func:`plan` the method, the request headers and what the store
knows about the object (:class:`Validators`); it gets back a :class:`Plan`:
the status, the headers that depend on the request, and the byte span to send.
Nothing here touches a socket or a file, so the whole table of cases is a unit
test.

Decisions (RFC 9110 leaves them to the server):

* Multiple ranges. A ``multipart/byteranges`` body is never produced: the
  satisfiable ranges are sorted and coalesced (overlapping or adjacent); if one
  span remains it is served as an ordinary single-part 206, otherwise the
  Range header is ignored and the whole object is sent with 200 (§14.2 allows
  ignoring Range). This keeps the sendfile path simple and closes the range
  amplification abuse (many small or overlapping ranges, CVE-2011-3192 and
  nginx CVE-2017-7529). More than :data:`MAX_RANGES` ranges are ignored too.
* A syntactically invalid Range header (whitespace inside a range-spec or
  around ``=`` too), or a unit other than ``bytes``, is ignored (200), as
  nginx and Apache do; a valid header none of whose ranges is
  satisfiable gives 416 with ``Content-Range: bytes */<length>``.
* A zero-length object: a ``first-last`` range is unsatisfiable (416); a suffix
  range of non-zero length is satisfiable by §14.1.1, but no ``Content-Range``
  can describe an empty part, so the header is ignored (200, empty body).
* Preconditions are evaluated in the order of §13.2.2: If-Match, then
  If-Unmodified-Since (only without If-Match), then If-None-Match, then
  If-Modified-Since (only without If-None-Match, GET/HEAD), then If-Range.
  If-Range with a strong ETag must match strongly; with a date it must equal
  Last-Modified exactly; a weak ETag never matches.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

MAX_RANGES = 16


@dataclass(frozen=True)
class Span:
    """Bytes ``start`` .. ``start + length - 1`` of the object."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length - 1


@dataclass(frozen=True)
class Validators:
    size: int
    etag: str  # quoted, as sent on the wire: "abc" or W/"abc"
    last_modified: datetime  # timezone-aware, whole seconds


@dataclass(frozen=True)
class Plan:
    status: int
    span: Span | None  # None: no body (304, 412, 416)
    headers: dict[str, str] = field(default_factory=dict)


# --- Range ----------------------------------------------------------------------------------


class _IgnoreRangeError(Exception):
    """The Range header must be ignored (invalid syntax, other unit, too many ranges)."""


def _parse_int(text: str) -> int:
    if not text or not text.isascii() or not text.isdigit():
        raise _IgnoreRangeError
    return int(text)


def parse_range(header: str, size: int) -> list[Span] | None:
    """Parse a Range header against an object of ``size`` bytes.

    Returns ``None`` when the header must be ignored (serve 200), an empty list
    when it is valid but nothing is satisfiable (416), else the coalesced spans.
    """
    try:
        return _parse_range(header, size)
    except _IgnoreRangeError:
        return None


def _parse_range(header: str, size: int) -> list[Span]:
    # ranges-specifier = range-unit "=" range-set; OWS only around the list's commas.
    unit, sep, rest = header.strip(" \t").partition("=")
    if not sep or unit.lower() != "bytes":
        raise _IgnoreRangeError
    specs = [s.strip(" \t") for s in rest.split(",")]
    specs = [s for s in specs if s]
    if not specs or len(specs) > MAX_RANGES:
        raise _IgnoreRangeError
    spans: list[Span] = []
    for spec in specs:
        first, dash, last = spec.partition("-")
        if not dash:
            raise _IgnoreRangeError
        if first == "":
            suffix = _parse_int(last)
            if suffix == 0:
                continue  # unsatisfiable
            if size == 0:
                raise _IgnoreRangeError  # satisfiable, yet no 206 can carry an empty part
            start = max(0, size - suffix)
            spans.append(Span(start, size - start))
            continue
        start = _parse_int(first)
        if last == "":
            end = size - 1
        else:
            end = _parse_int(last)
            if end < start:
                raise _IgnoreRangeError  # invalid range-spec: the whole header is invalid
        if start >= size:
            continue  # unsatisfiable
        end = min(end, size - 1)
        spans.append(Span(start, end - start + 1))
    return _coalesce(spans)


def _coalesce(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        if merged and span.start <= merged[-1].end + 1:
            last = merged[-1]
            end = max(last.end, span.end)
            merged[-1] = Span(last.start, end - last.start + 1)
        else:
            merged.append(span)
    return merged


# --- Validators -----------------------------------------------------------------------------


def parse_http_date(value: str) -> datetime | None:
    """IMF-fixdate, RFC 850 or asctime; ``None`` for anything invalid (then ignored)."""
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def format_http_date(when: datetime) -> str:
    return email.utils.format_datetime(when.astimezone(UTC), usegmt=True)


def _etag_list(value: str) -> list[str] | None:
    """Entity tags of an If-Match / If-None-Match value; ``None`` for ``*``."""
    value = value.strip()
    if value == "*":
        return None
    tags: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        start = i
        if value.startswith("W/", i):
            i += 2
        if i < n and value[i] == '"':
            close = value.find('"', i + 1)
            if close < 0:
                break
            i = close + 1
            tags.append(value[start:i])
        else:  # not an entity-tag: skip to the next comma
            while i < n and value[i] != ",":
                i += 1
    return tags


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def strong_match(a: str, b: str) -> bool:
    return not a.startswith("W/") and not b.startswith("W/") and a == b


def weak_match(a: str, b: str) -> bool:
    return _opaque(a) == _opaque(b)


def _matches_any(header: str, etag: str, *, strong: bool) -> bool:
    tags = _etag_list(header)
    if tags is None:
        return True  # "*": the representation exists
    compare = strong_match if strong else weak_match
    return any(compare(t, etag) for t in tags)


# --- The plan -------------------------------------------------------------------------------


def plan(method: str, headers: Mapping[str, str], obj: Validators) -> Plan:
    """Decide status, request-dependent headers and the byte span for GET or HEAD."""
    get_or_head = method in ("GET", "HEAD")
    lm = obj.last_modified.replace(microsecond=0)

    if_match = headers.get("If-Match")
    if if_match is not None:
        if not _matches_any(if_match, obj.etag, strong=True):
            return Plan(412, None)
    else:
        ius = headers.get("If-Unmodified-Since")
        if ius is not None:
            when = parse_http_date(ius)
            if when is not None and lm > when:
                return Plan(412, None)

    inm = headers.get("If-None-Match")
    if inm is not None:
        if _matches_any(inm, obj.etag, strong=False):
            return Plan(304, None) if get_or_head else Plan(412, None)
    elif get_or_head:
        ims = headers.get("If-Modified-Since")
        if ims is not None:
            when = parse_http_date(ims)
            if when is not None and lm <= when:
                return Plan(304, None)

    full = Plan(200, Span(0, obj.size), {"Content-Length": str(obj.size)})
    range_header = headers.get("Range")
    if method != "GET" or range_header is None:
        return full
    if_range = headers.get("If-Range")
    if if_range is not None and not _if_range_holds(if_range, obj, lm):
        return full
    spans = parse_range(range_header, obj.size)
    if spans is None:
        return full
    if not spans:
        return Plan(416, None, {"Content-Range": f"bytes */{obj.size}"})
    if len(spans) > 1:
        return full
    span = spans[0]
    return Plan(
        206,
        span,
        {
            "Content-Range": f"bytes {span.start}-{span.end}/{obj.size}",
            "Content-Length": str(span.length),
        },
    )


def _if_range_holds(value: str, obj: Validators, lm: datetime) -> bool:
    value = value.strip()
    if value.startswith(('"', "W/")):
        return strong_match(value, obj.etag)
    when = parse_http_date(value)
    return when is not None and when == lm
