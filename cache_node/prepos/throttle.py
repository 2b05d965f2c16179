"""The node's fill rate cap (one token bucket for every fill stream) and window budget.

A token bucket measured in bytes: every fill stream takes tokens for each
chunk *after* it arrived and before it is written, so the sum of all streams
is held to ``rate`` bytes per second plus at most ``burst``. Takers may drive
the bucket into debt and then sleep it off, which keeps the streams fair (each
waits for the debt in front of it) and the average exact, without polling.
TCP flow control then slows the origin's sending to what we read.

The clock and sleep are injectable so tests check the arithmetic without time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

MIN_BURST = 256 * 1024


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.rate = 1.0
        self.burst = 1.0
        self.set_rate(rate, burst)
        self._tokens = self.burst
        self._last = clock()
        self.waited_seconds = 0.0
        self.taken_bytes = 0

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the cap (a re-rendered config); the default burst is 1/10 s of rate."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(MIN_BURST, rate / 10))

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def debit(self, size: int) -> float:
        """Take ``size`` tokens now; returns how long the caller must wait (0 if none)."""
        self._refill()
        self._tokens -= size
        self.taken_bytes += size
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    async def take(self, size: int) -> None:
        wait = self.debit(size)
        if wait > 0:
            self.waited_seconds += wait
            await self._sleep(wait)


class WindowBudget:
    """Bytes a node may fill per window occurrence (Open Connect: 6.5 TB per appliance).

    ``used`` is keyed by the window occurrence's id so a new night starts at
    zero; the scheduler persists it so a restart does not reset the budget.
    """

    def __init__(self, limit: int | None, used: dict[str, int] | None = None) -> None:
        self.limit = limit
        self.used: dict[str, int] = dict(used or {})

    def remaining(self, window_id: str) -> int | None:
        if self.limit is None:
            return None
        return max(0, self.limit - self.used.get(window_id, 0))

    def admits(self, window_id: str, size: int) -> bool:
        """Whether a whole object of ``size`` bytes still fits in this window's budget."""
        left = self.remaining(window_id)
        return left is None or size <= left

    def charge(self, window_id: str, size: int) -> None:
        used = self.used.get(window_id)
        if used is not None:
            self.used[window_id] = used + size
            return
        self.used[window_id] = size
        # A new occurrence: only the current one matters; keep the document small.
        for old in sorted(self.used)[:-2]:
            del self.used[old]
