"""CRC-32 of a body from the CRC-32s of its pieces, and S3's form of the checksum.

S3 answers a full GET of an object stored with a CRC-32 checksum with
``x-amz-checksum-crc32``: the base64 of the big-endian CRC-32 (the zlib/IEEE
polynomial) of the whole object. botocore checks it while the body streams, on
the thread that reads the body: the event loop. The store instead computes a
CRC-32 of each piece in its hashing threads, from the bytes it reads back for
SHA-256 anyway, and :func:`combine` joins them in piece order. Python's
:mod:`zlib` can continue a running CRC over bytes in order only; it does not
expose zlib's ``crc32_combine``, so that operator is built here.

Why :func:`combine` is right: with ``f(v, D) = zlib.crc32(D, v)`` and ``Z`` a run
of ``n = len(D)`` zero bytes, ``f`` is affine over GF(2), so
``f(v, D) = f(0, D) ^ shift(v, n)`` with ``shift(v, n) = f(v, Z) ^ f(0, Z)``, a
linear map of ``v``: "append ``n`` zero bytes". Hence
``crc(A + B) = crc(B) ^ shift(crc(A), len(B))``. ``shift`` for ``n`` is the
product of the maps for the powers of two in ``n``; each is a 32x32 bit matrix,
kept as the images of the 32 unit vectors and made by squaring the one before.
"""

from __future__ import annotations

import base64
import binascii
import zlib

# _POWERS[k]: the images of 1 << i (i = 0..31) under "append 2**k zero bytes".
_POWERS: list[tuple[int, ...]] = []


def _apply(matrix: tuple[int, ...], vector: int) -> int:
    out = 0
    i = 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _power(k: int) -> tuple[int, ...]:
    while len(_POWERS) <= k:
        if not _POWERS:
            zero = zlib.crc32(b"\0")
            _POWERS.append(tuple(zlib.crc32(b"\0", 1 << i) ^ zero for i in range(32)))
        else:
            last = _POWERS[-1]
            _POWERS.append(tuple(_apply(last, column) for column in last))
    return _POWERS[k]


def shift(crc: int, length: int) -> int:
    """``crc`` carried over ``length`` zero bytes, less their own CRC (see the module)."""
    if length < 0:
        raise ValueError("length must not be negative")
    k = 0
    while length:
        if length & 1:
            crc = _apply(_power(k), crc)
        length >>= 1
        k += 1
    return crc


def combine(first: int, second: int, second_length: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``."""
    return second ^ shift(first, second_length)


def combine_all(pieces: list[tuple[int, int]]) -> int:
    """The CRC-32 of the concatenation of pieces given as ``(crc32, length)`` in order."""
    crc = 0
    for piece_crc, length in pieces:
        crc = combine(crc, piece_crc, length)
    return crc


def from_s3(value: str | None) -> int | None:
    """The CRC-32 in an ``x-amz-checksum-crc32`` value, or ``None``.

    ``None`` also for a composite checksum (``...-N``: a checksum of the part
    checksums of a multipart upload, not of the bytes) and for a value that is
    not base64 of four bytes: neither can be compared with the body's CRC-32.
    """
    if not value or "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 4:
        return None
    return int.from_bytes(raw, "big")


def to_s3(crc: int) -> str:
    """``crc`` as S3 writes it in ``x-amz-checksum-crc32``."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")
