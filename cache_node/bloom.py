"""A Bloom filter of the keys a node holds: Squid-style cache digests.

A sibling site is asked for a key only when its digest says it probably holds
it; a false positive costs one request answered 404, a false negative cannot
happen for keys held when the digest was built. Filters with the same size
and hash count merge by OR, so a site's digest is the union of its members'.

Wire format: 4-byte magic ``EFBF``, 1-byte version, 1-byte hash count, 4-byte
bit count (big endian), then the bit array.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Iterable

MAGIC = b"EFBF"
VERSION = 1
_HEADER = struct.Struct(">4sBBI")
MAX_BITS = 64 * 1024 * 1024 * 8


class BloomFilter:
    def __init__(self, bits: int, hashes: int) -> None:
        if not 8 <= bits <= MAX_BITS or not 1 <= hashes <= 32:
            raise ValueError(f"unsupported Bloom filter shape: {bits} bits, {hashes} hashes")
        self.bits = bits
        self.hashes = hashes
        self._array = bytearray((bits + 7) // 8)

    @classmethod
    def for_capacity(cls, items: int, fp_rate: float = 0.01) -> BloomFilter:
        items = max(items, 1024)
        bits = math.ceil(-items * math.log(fp_rate) / (math.log(2) ** 2))
        bits = 1 << max(13, (bits - 1).bit_length())  # power of two: shapes match for merging
        hashes = max(1, round(bits / items * math.log(2)))
        return cls(bits, min(hashes, 16))

    def _positions(self, key: str) -> Iterable[int]:
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
        h1 = int.from_bytes(digest[:8], "big")
        h2 = int.from_bytes(digest[8:], "big") | 1
        for i in range(self.hashes):
            yield (h1 + i * h2) % self.bits

    def add(self, key: str) -> None:
        for pos in self._positions(key):
            self._array[pos >> 3] |= 1 << (pos & 7)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return all(self._array[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(key))

    def union(self, other: BloomFilter) -> None:
        if (other.bits, other.hashes) != (self.bits, self.hashes):
            raise ValueError("Bloom filters of different shapes cannot be merged")
        for i, byte in enumerate(other._array):
            self._array[i] |= byte

    def to_bytes(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, self.hashes, self.bits) + bytes(self._array)

    @classmethod
    def from_bytes(cls, data: bytes) -> BloomFilter:
        if len(data) < _HEADER.size:
            raise ValueError("digest too short")
        magic, version, hashes, bits = _HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise ValueError("not an EdgeFill digest")
        bloom = cls(bits, hashes)
        body = data[_HEADER.size :]
        if len(body) != len(bloom._array):
            raise ValueError("digest length does not match its header")
        bloom._array[:] = body
        return bloom


# One shape for every node's digest, so members' digests merge into a site digest:
# 2 Mibit (256 KiB) and 7 hashes hold about 200,000 keys at a 1 % false-positive rate.
DIGEST_BITS = 1 << 21
DIGEST_HASHES = 7


def digest_of(keys: Iterable[str]) -> BloomFilter:
    bloom = BloomFilter(DIGEST_BITS, DIGEST_HASHES)
    for key in keys:
        bloom.add(key)
    return bloom


class CachedDigest:
    """A node's own digest, rebuilt only when the store changed since the last build."""

    def __init__(self) -> None:
        self._bloom: BloomFilter | None = None
        self._version = -1

    def get(self, keys: Callable[[], Iterable[str]], version: int) -> BloomFilter:
        if self._bloom is None or version != self._version:
            self._bloom = digest_of(keys())
            self._version = version
        return self._bloom
