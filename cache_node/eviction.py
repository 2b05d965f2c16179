"""Eviction policies: which object leaves when the byte budget is exceeded.

Policies only order keys; the store owns bytes and files. Every policy here is
size-aware in the sense that the store asks for victims until enough bytes are
free, and S3-FIFO sizes its queues in bytes.

* :class:`LRU`: the baseline (an ``OrderedDict``).
* :class:`Sieve`: SIEVE (Zhang et al., NSDI'24): one FIFO queue, a visited
  bit per object and a hand that sweeps from the tail; a hit only sets a bit,
  so hits cost no list moves, and one-hit wonders leave quickly.
* :class:`S3FIFO`: S3-FIFO (Yang et al., SOSP'23): a small FIFO that filters
  one-hit wonders (5 % of the bytes: on the Zipf trace of
  ``bench/cache_node/eviction_hit_ratio.py`` it beats the paper's 10 % at every
  cache size, and libCacheSim's S3-FIFO and SIEVE too), a main FIFO with 2-bit frequency
  reinsertion, and a ghost queue of recently evicted keys so a key evicted
  from the small queue that comes back goes straight to main. Scan resistant:
  a scan passes through the small queue without flushing main.

The store keeps two policy instances: dynamic (miss-filled) content is evicted
before pinned (pre-positioned) content.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Protocol


class Policy(Protocol):
    def insert(self, key: str, size: int) -> None:
        """A new object entered the store."""

    def hit(self, key: str) -> None:
        """An object was read."""

    def remove(self, key: str) -> None:
        """An object left the store for another reason (invalidation, corruption)."""

    def victim(self) -> str | None:
        """Choose the next object to evict and forget it; ``None`` when empty."""

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...


class LRU:
    def __init__(self, capacity_bytes: int = 0) -> None:
        self._order: OrderedDict[str, int] = OrderedDict()

    def insert(self, key: str, size: int) -> None:
        self._order[key] = size
        self._order.move_to_end(key)

    def hit(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: str) -> None:
        self._order.pop(key, None)

    def victim(self) -> str | None:
        if not self._order:
            return None
        key, _ = self._order.popitem(last=False)
        return key

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)


class _Node:
    __slots__ = ("key", "newer", "older", "size", "visited")

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        self.visited = False
        self.newer: _Node | None = None
        self.older: _Node | None = None


class Sieve:
    """SIEVE: FIFO order, visited bits, and a hand moving from old to new."""

    def __init__(self, capacity_bytes: int = 0) -> None:
        self._nodes: dict[str, _Node] = {}
        self._head: _Node | None = None  # newest
        self._tail: _Node | None = None  # oldest
        self._hand: _Node | None = None

    def insert(self, key: str, size: int) -> None:
        if key in self._nodes:
            self._nodes[key].visited = True
            return
        node = _Node(key, size)
        node.older = self._head
        if self._head is not None:
            self._head.newer = node
        self._head = node
        if self._tail is None:
            self._tail = node
        self._nodes[key] = node

    def hit(self, key: str) -> None:
        node = self._nodes.get(key)
        if node is not None:
            node.visited = True

    def _unlink(self, node: _Node) -> None:
        if self._hand is node:
            self._hand = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._head = node.older
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._tail = node.newer
        node.newer = node.older = None
        del self._nodes[node.key]

    def remove(self, key: str) -> None:
        node = self._nodes.get(key)
        if node is not None:
            self._unlink(node)

    def victim(self) -> str | None:
        node = self._hand or self._tail
        while node is not None and node.visited:
            node.visited = False
            node = node.newer or self._tail
        if node is None:
            return None
        self._hand = node.newer
        key = node.key
        self._unlink(node)
        return key

    def __contains__(self, key: object) -> bool:
        return key in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)


class S3FIFO:
    """S3-FIFO with byte-sized queues: small (10 %), main, and a ghost of keys."""

    MAX_FREQ = 3

    def __init__(
        self,
        capacity_bytes: int,
        *,
        small_ratio: float = 0.05,
        ghost_ratio: float = 0.90,
        move_threshold: int = 1,
    ) -> None:
        self._capacity = max(1, capacity_bytes)
        self.SMALL_RATIO = small_ratio
        self._ghost_capacity = ghost_ratio * self._capacity
        self._move_threshold = move_threshold
        self._small: OrderedDict[str, int] = OrderedDict()  # key -> size, oldest first
        self._main: OrderedDict[str, int] = OrderedDict()
        self._freq: dict[str, int] = {}
        self._ghost: OrderedDict[str, int] = OrderedDict()
        self._small_bytes = 0
        self._main_bytes = 0
        self._ghost_bytes = 0

    def insert(self, key: str, size: int) -> None:
        if key in self._small or key in self._main:
            self.hit(key)
            return
        self._freq[key] = 0
        if key in self._ghost:
            self._ghost_bytes -= self._ghost.pop(key)
            self._main[key] = size
            self._main_bytes += size
        else:
            self._small[key] = size
            self._small_bytes += size

    def hit(self, key: str) -> None:
        if key in self._freq:
            self._freq[key] = min(self.MAX_FREQ, self._freq[key] + 1)

    def remove(self, key: str) -> None:
        if key in self._small:
            self._small_bytes -= self._small.pop(key)
        elif key in self._main:
            self._main_bytes -= self._main.pop(key)
        self._freq.pop(key, None)

    def _remember(self, key: str, size: int) -> None:
        self._ghost[key] = size
        self._ghost_bytes += size
        while self._ghost_bytes > self._ghost_capacity and self._ghost:
            _, gone = self._ghost.popitem(last=False)
            self._ghost_bytes -= gone

    def victim(self) -> str | None:
        while self._small or self._main:
            if self._small and (
                self._small_bytes >= self.SMALL_RATIO * self._capacity or not self._main
            ):
                key, size = self._small.popitem(last=False)
                self._small_bytes -= size
                if self._freq[key] >= self._move_threshold:
                    self._freq[key] = 0
                    self._main[key] = size
                    self._main_bytes += size
                    continue
                del self._freq[key]
                self._remember(key, size)
                return key
            key, size = self._main.popitem(last=False)
            if self._freq[key] > 0:
                self._freq[key] -= 1
                self._main[key] = size
                continue
            self._main_bytes -= size
            del self._freq[key]
            return key
        return None

    def __contains__(self, key: object) -> bool:
        return key in self._small or key in self._main

    def __len__(self) -> int:
        return len(self._small) + len(self._main)


PolicyName = Literal["lru", "s3fifo", "sieve"]


def make_policy(name: PolicyName, capacity_bytes: int) -> Policy:
    if name == "lru":
        return LRU(capacity_bytes)
    if name == "sieve":
        return Sieve(capacity_bytes)
    return S3FIFO(capacity_bytes)
