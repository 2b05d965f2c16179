"""Which keys this node fills, from whom, and in what order (pure functions).

Placement is rendezvous hashing over the site's member names (the same
:mod:`cache_node.ring` the miss path uses, so a client miss on a non-owner
asks the node that pre-positioned the key): the top ``copies`` members of a
key's ranking own it. Every member computes the same answer from the member
list alone, and a membership change moves only the keys whose top-``copies``
set changed (about ``copies/n`` of them when one of ``n`` members joins).

Fill order: ContentSets by priority (higher first, as the CRD documents),
then by popularity rank inside a set (rank 1 first), then by key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cache_node.prepos.catalogue import Item
from cache_node.ring import owners, rank


@dataclass(frozen=True)
class Task:
    """One key to hold for one fill-plan entry."""

    content_set: str
    priority: int
    item: Item
    pinned: bool = True
    copies: int = 1
    bucket: str = ""
    piece_size: int = 1024 * 1024

    @property
    def key(self) -> str:
        return self.item.key

    def order(self) -> tuple[int, int, str, str]:
        return (-self.priority, self.item.rank, self.item.key, self.content_set)


def owns(key: str, members: Sequence[str], me: str, copies: int) -> bool:
    """Whether ``me`` is one of the ``copies`` owners of ``key``.

    With no members configured (a single node run locally) the node owns
    everything; a node missing from a non-empty member list owns nothing.
    """
    if not members:
        return True
    if me not in members:
        return False
    return me in owners(key, members, copies)


def owned(items: Iterable[Item], members: Sequence[str], me: str, copies: int) -> list[Item]:
    return [item for item in items if owns(item.key, members, me, copies)]


def holders(
    key: str,
    me: str,
    current: Sequence[str],
    previous: Sequence[str],
    copies: int,
) -> list[str]:
    """Members that probably hold ``key`` although they are not its owners now.

    These are the owners the key had before this node became one: the top
    ``copies`` of the ranking without this node, under the current and the
    previous membership. Current co-owners are left out, so on a first fill
    every copy comes from the origin (once per copy) and only a move is a
    peer fill.
    """
    co_owners = set(owners(key, current, copies)) if current else {me}
    out: list[str] = []
    for members in (current, previous):
        others = [m for m in members if m != me]
        for name in rank(key, others)[:copies]:
            if name not in co_owners and name not in out:
                out.append(name)
    return out


def ordered(tasks: Iterable[Task]) -> list[Task]:
    return sorted(tasks, key=Task.order)
