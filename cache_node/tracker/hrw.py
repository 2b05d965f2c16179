"""Rendezvous (highest-random-weight) hashing over the members of a site.

One function decides which member owns a key, for content and for tracker
swarms alike, so every node computes the same answer from the same member list
without coordination. When a member leaves, only the keys it owned move (to
each key's next-ranked member); the ranked list is also the natural fallback
order when the owner is down.

The weight is the first 8 bytes of BLAKE2b(member NUL key) read big-endian:
stable across processes and Python versions (unlike ``hash()``), fast, and
uniform. Keep this module free of tracker imports so the content side can
reuse it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(member: str, key: bytes | str) -> int:
    """The HRW weight of ``member`` for ``key`` (a 64-bit unsigned integer)."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    digest = hashlib.blake2b(member.encode("utf-8") + b"\0" + raw, digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(key: bytes | str, members: Iterable[str]) -> list[str]:
    """Members ordered from owner to last fallback; ties break by name for determinism."""
    return sorted(set(members), key=lambda m: (-weight(m, key), m))


def owner(key: bytes | str, members: Iterable[str]) -> str | None:
    """The member owning ``key``, or ``None`` when there are no members."""
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (weight(member, key), member)
        if (
            best is None
            or candidate[0] > best[0]
            or (candidate[0] == best[0] and candidate[1] < best[1])
        ):
            best = candidate
    return None if best is None else best[1]
