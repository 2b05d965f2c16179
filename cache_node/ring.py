"""Rendezvous (highest random weight) hashing: who owns a key among a site's members.

Every member computes the same ranking from the member names alone, with no
shared state: the owner is the member with the highest ``hash(member, key)``,
and the rest of the ranking is the fallback order when the owner is down.
When a member joins or leaves, only the keys it wins or held move (about
``1/n`` of them), which is why Open Connect and Traffic Server's peering ring
place content this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(member: str, key: str) -> int:
    digest = hashlib.blake2b(
        member.encode("utf-8") + b"\x00" + key.encode("utf-8"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def rank(key: str, members: Iterable[str]) -> list[str]:
    """Members ordered by preference for ``key``: owner first (ties broken by name)."""
    return sorted(set(members), key=lambda m: (-score(m, key), m))


def owners(key: str, members: Iterable[str], copies: int = 1) -> list[str]:
    return rank(key, members)[: max(1, copies)]
