"""CRC-32 of a body from the CRC-32s of its pieces, and S3's form of the checksum.

S3 answers a full GET of an object stored with a CRC-32 checksum with
``x-amz-checksum-crc32``: the base64 of the big-endian CRC-32 (the zlib/IEEE
polynomial) of the whole object. botocore checks it while the body streams, on
the thread that reads the body: the event loop. The store computes a CRC-32
of each piece as it writes it (its own piece checksum), and
:func:`combine_all` joins them in piece order: each byte is summed once.

The CRC-32 itself is zlib-ng's (:func:`crc32`): it folds with carry-less
multiplication (PCLMULQDQ/VPCLMULQDQ on x86-64, PMULL on Arm) at 10+ GiB/s
where the system zlib's table-driven loop does 2.5-3.5 GiB/s, and it releases
the GIL like :func:`zlib.crc32`. It also has ``crc32_combine``, which Python's
:mod:`zlib` does not expose. The values are zlib's, bit for bit.
"""

from __future__ import annotations

import base64
import binascii

from zlib_ng import zlib_ng

crc32 = zlib_ng.crc32
"""``crc32(data, value=0)``: the CRC-32 of ``data`` continuing from ``value``, as
:func:`zlib.crc32`."""


def combine(first: int, second: int, second_length: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``."""
    if second_length < 0:
        raise ValueError("second_length must not be negative")
    return zlib_ng.crc32_combine(first, second, second_length)


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
