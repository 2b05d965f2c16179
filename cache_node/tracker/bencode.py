"""Bencoding (BEP 3): the wire format of HTTP announce and scrape responses.

Decoding is strict because it parses untrusted input (announce bodies in tests,
metainfo from anywhere): canonical integers only (no leading zeros, no ``-0``),
dictionary keys must be byte strings in sorted order without duplicates, and
nesting depth is bounded so a hostile document cannot exhaust the stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Bencodable = (
    int
    | bytes
    | str
    | Sequence["Bencodable"]
    | Mapping[str, "Bencodable"]
    | Mapping[bytes, "Bencodable"]
)
Decoded = int | bytes | list["Decoded"] | dict[bytes, "Decoded"]

MAX_DEPTH = 64


class BencodeError(ValueError):
    """The input is not valid canonical bencoding; the message says where."""


def encode(value: Bencodable) -> bytes:
    """Encode ``value``; ``str`` becomes UTF-8 bytes, dict keys are sorted as raw bytes."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Bencodable, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, bool):
        # bool is an int subclass; encoding True as i1e silently is a bug magnet.
        raise TypeError("booleans have no bencoding; use 0 or 1")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes):
        out.append(b"%d:" % len(value))
        out.append(value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, Mapping):
        items: dict[bytes, Bencodable] = {}
        for k, v in value.items():
            kb = k.encode("utf-8") if isinstance(k, str) else k
            if kb in items:
                raise BencodeError(f"duplicate dictionary key {kb!r}")
            items[kb] = v
        out.append(b"d")
        for kb in sorted(items):
            out.append(b"%d:" % len(kb))
            out.append(kb)
            _encode(items[kb], out, depth + 1)
        out.append(b"e")
    elif isinstance(value, Sequence):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Decoded:
    """Decode one complete bencoded value; trailing bytes are an error."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[Decoded, int]:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH} at offset {pos}")
    if pos >= len(data):
        raise BencodeError(f"unexpected end of data at offset {pos}")
    lead = data[pos : pos + 1]
    if lead == b"i":
        end = data.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError(f"unterminated integer at offset {pos}")
        text = data[pos + 1 : end]
        if not _is_canonical_int(text):
            raise BencodeError(f"malformed integer {text!r} at offset {pos}")
        return int(text), end + 1
    if lead == b"l":
        items: list[Decoded] = []
        pos += 1
        while data[pos : pos + 1] != b"e":
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        result: dict[bytes, Decoded] = {}
        previous: bytes | None = None
        pos += 1
        while data[pos : pos + 1] != b"e":
            if pos >= len(data):
                raise BencodeError("unterminated dictionary")
            key, pos = _decode_bytes(data, pos)
            if previous is not None and key <= previous:
                raise BencodeError(f"dictionary keys unsorted or duplicated at {key!r}")
            previous = key
            result[key], pos = _decode(data, pos, depth + 1)
        return result, pos + 1
    if lead.isdigit():
        return _decode_bytes(data, pos)
    raise BencodeError(f"unexpected byte {lead!r} at offset {pos}")


def _decode_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    colon = data.find(b":", pos)
    if colon < 0:
        raise BencodeError(f"byte string without ':' at offset {pos}")
    text = data[pos:colon]
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0"):
        raise BencodeError(f"malformed string length {text!r} at offset {pos}")
    length = int(text)
    start = colon + 1
    if start + length > len(data):
        raise BencodeError(f"string of {length} bytes runs past the end at offset {pos}")
    return data[start : start + length], start + length


def _is_canonical_int(text: bytes) -> bool:
    digits = text[1:] if text[:1] == b"-" else text
    if not digits.isdigit():
        return False
    return not (digits[:1] == b"0" and (len(digits) > 1 or text[:1] == b"-"))
