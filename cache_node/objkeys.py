"""Object keys: from a request's raw path to the one key the store and S3 see.

Why a strict normaliser rather than ``os.path.normpath``: the key is an S3
object key, never a filesystem path (the store names files by the key's
SHA-256), so traversal cannot reach the disk by construction. The normaliser
still refuses every spelling that other layers could read differently
(aiohttp CVE-2024-23334 was a path joined onto a directory), so that one key
has one spelling in the cache, in metrics and upstream:

* the path is percent-decoded exactly once; a malformed escape is an error;
* unreserved characters written as escapes (``%61``) decode to themselves, so
  ``/vod/%61.ts`` and ``/vod/a.ts`` are the same key;
* runs of ``/`` collapse to one and the leading ``/`` is dropped;
* dot segments (``.``/``..``, also when encoded as ``%2e``), backslashes, NUL
  and other control characters are refused rather than resolved, because a
  client that sends them is probing, not fetching;
* an encoded slash (``%2F``) is refused: it would let one key have two
  spellings with different segment boundaries;
* keys longer than S3's limit of 1,024 UTF-8 bytes are refused (414).

Query strings never take part in the key: objects are immutable S3 keys and the
token travels in the query, so it must never reach the cache key.
"""

from __future__ import annotations

import re

MAX_KEY_BYTES = 1024
MAX_RAW_PATH = 4 * MAX_KEY_BYTES

_HEX = frozenset("0123456789abcdefABCDEF")
# A path that needs no decoding and no checks beyond this: one or more non-empty
# segments of printable ASCII without "%", "\\", "?" or "#" (the hit path's common case).
_PLAIN = re.compile(r"(?:/[!$&'()*+,\-.0-9:;=@A-Z_a-z~]+)+")


class KeyRejectedError(Exception):
    """A request path that is not a valid object key; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _percent_decode(raw: str) -> bytes:
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if ch == "%":
            esc = raw[i + 1 : i + 3]
            if len(esc) != 2 or not (esc[0] in _HEX and esc[1] in _HEX):
                raise KeyRejectedError(400, f"malformed percent-escape at offset {i} of the path")
            value = int(esc, 16)
            if value == 0x2F:
                raise KeyRejectedError(400, "an encoded slash (%2F) is not allowed in a key")
            out.append(value)
            i += 3
            continue
        out += ch.encode("utf-8")
        i += 1
    return bytes(out)


def normalise(raw_path: str) -> str:
    """Return the object key for a request's raw path (without the query string).

    Raises :class:`KeyRejectedError` with status 400 or 414 and a reason a person can act on.
    """
    path = raw_path.partition("?")[0].partition("#")[0]
    if len(path) <= MAX_KEY_BYTES and "/." not in path and _PLAIN.fullmatch(path):
        return path[1:]  # what the general path below returns for it, without the work
    return _normalise(path)


def _normalise(path: str) -> str:
    if len(path) > MAX_RAW_PATH:
        raise KeyRejectedError(414, f"the path is longer than {MAX_RAW_PATH} characters")
    if "\\" in path:
        raise KeyRejectedError(400, "backslashes are not allowed in an object key")
    decoded = _percent_decode(path)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyRejectedError(400, "the path is not valid UTF-8 after percent-decoding") from None
    for ch in text:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise KeyRejectedError(400, "control characters (NUL too) are not allowed in a key")
    if "\\" in text:
        raise KeyRejectedError(400, "backslashes are not allowed in an object key")
    segments = [s for s in text.split("/") if s]
    for seg in segments:
        if seg in (".", ".."):
            raise KeyRejectedError(400, "dot segments ('.', '..') are not allowed in a key")
    if not segments:
        raise KeyRejectedError(404, "no object key in the path")
    key = "/".join(segments)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise KeyRejectedError(414, f"the object key is longer than {MAX_KEY_BYTES} bytes")
    return key
