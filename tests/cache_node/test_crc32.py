"""CRC-32 of a body from the CRC-32s of its pieces (cache_node.crc32), against zlib."""

from __future__ import annotations

import base64
import itertools
import random
import zlib

import pytest

from cache_node import crc32


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("seed", range(40))
def test_combining_piece_crcs_gives_the_crc_of_the_whole(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(0, 20_000))
    cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(0, 6))]
    pieces = _pieces(data, cuts)  # empty pieces included when cuts repeat
    assert crc32.combine_all([(zlib.crc32(p), len(p)) for p in pieces]) == zlib.crc32(data)


def test_store_sized_pieces_with_a_short_last_one() -> None:
    piece = 1 << 20
    data = random.Random(7).randbytes(3 * piece + 12_345)
    parts = [data[i : i + piece] for i in range(0, len(data), piece)]
    assert crc32.combine_all([(zlib.crc32(p), len(p)) for p in parts]) == zlib.crc32(data)


def test_two_pieces_and_the_zero_length_identities() -> None:
    a, b = b"hello, ", b"world"
    assert crc32.combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert crc32.combine(zlib.crc32(a), 0, 0) == zlib.crc32(a)  # an empty second piece
    assert crc32.combine(0, zlib.crc32(b), len(b)) == zlib.crc32(b)  # an empty first piece
    assert crc32.combine_all([]) == zlib.crc32(b"") == 0
    with pytest.raises(ValueError, match="negative"):
        crc32.combine(1, 2, -1)


def test_the_crc_is_zlibs_bit_for_bit_also_continued_and_over_views() -> None:
    data = random.Random(3).randbytes(300_000)
    assert crc32.crc32(data) == zlib.crc32(data)
    view = memoryview(data)
    assert crc32.crc32(view[1000:], crc32.crc32(view[:1000])) == zlib.crc32(data)
    assert crc32.crc32(b"") == 0


def test_combining_over_a_length_beyond_any_buffer() -> None:
    """Objects of terabytes: combining must not depend on the length being small.

    ``combine(v, 0, n)`` is "append n zero bytes" less their own CRC, a linear map of
    ``v`` (see zlib's crc32_combine). Appending n + 3 zeros is the same map whatever
    the split, and linear; checked directly against zlib where the zeros fit in memory.
    """
    n = (1 << 40) + 3
    a, b = zlib.crc32(b"edgefill"), zlib.crc32(b"peer assist")
    left = crc32.combine(crc32.combine(a, 0, n), 0, 3)
    right = crc32.combine(crc32.combine(a, 0, n - 3), 0, 6)
    assert left == right
    assert crc32.combine(a ^ b, 0, n) == crc32.combine(a, 0, n) ^ crc32.combine(b, 0, n)
    assert crc32.combine(a, 0, n) != crc32.combine(a, 0, n + 1)
    zeros = bytes(5 << 20)
    assert crc32.combine(a, zlib.crc32(zeros), len(zeros)) == zlib.crc32(zeros, a)


def test_the_s3_header_form() -> None:
    value = zlib.crc32(b"edgefill")
    header = base64.b64encode(value.to_bytes(4, "big")).decode()
    assert crc32.to_s3(value) == header
    assert crc32.from_s3(header) == value
    assert crc32.from_s3(None) is None
    assert crc32.from_s3("") is None
    assert crc32.from_s3(header + "-3") is None  # composite (multipart): not of the bytes
    assert crc32.from_s3("AAAA") is None  # three bytes, not four
    assert crc32.from_s3("not base64!") is None
