"""Per-source token buckets with a bounded table.

One source may announce in bursts (a player joining several swarms at once)
but not flood. Sources are IPv4 addresses or IPv6 /64 prefixes: an IPv6
client controls its whole /64, so counting single addresses would let it
rotate past any limit. The table is an LRU bounded by ``max_sources``; a
flood of spoofed-looking sources can only evict idle buckets, which then
restart full, so memory stays bounded without punishing anyone wrongly.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from cache_node.tracker.addresses import IPAddress


def source_key(addr: IPAddress) -> bytes:
    """The rate-limit identity of ``addr``: the IPv4 address or the IPv6 /64."""
    if isinstance(addr, ipaddress.IPv6Address):
        return addr.packed[:8]
    return addr.packed


class RateLimiter:
    """Token buckets: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_sources >= 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        # key -> [tokens, last refill time]; a list keeps the update in place.
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, addr: IPAddress, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from the source's bucket; False when it is empty."""
        key = source_key(addr)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
            bucket = [self.burst, now]
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
            bucket[1] = now
        if bucket[0] >= cost:
            bucket[0] -= cost
            return True
        return False

    def retry_after(self, addr: IPAddress) -> float:
        """Seconds until one token is available again for ``addr`` (a hint for 429)."""
        bucket = self._buckets.get(source_key(addr))
        if bucket is None or bucket[0] >= 1:
            return 0.0
        return (1 - bucket[0]) / self.rate
