from __future__ import annotations

import ipaddress

from cache_node.tracker.ratelimit import RateLimiter

ip = ipaddress.ip_address


def test_burst_then_throttle_then_refill() -> None:
    rl = RateLimiter(rate=2.0, burst=5, max_sources=100)
    a = ip("10.0.0.1")
    assert all(rl.allow(a, now=0.0) for _ in range(5))
    assert not rl.allow(a, now=0.0)
    assert rl.retry_after(a) == 0.5
    assert rl.allow(a, now=0.5)  # one token back after 1/rate seconds
    assert not rl.allow(a, now=0.5)


def test_sources_are_independent() -> None:
    rl = RateLimiter(rate=1.0, burst=3, max_sources=100)
    for _ in range(50):
        rl.allow(ip("10.0.0.1"), now=0.0)
    assert rl.allow(ip("10.0.0.2"), now=0.0)


def test_ipv6_counts_per_64() -> None:
    rl = RateLimiter(rate=1.0, burst=2, max_sources=100)
    assert rl.allow(ip("2001:db8:0:1::1"), now=0.0)
    assert rl.allow(ip("2001:db8:0:1::2"), now=0.0)
    assert not rl.allow(ip("2001:db8:0:1::3"), now=0.0)
    assert rl.allow(ip("2001:db8:0:2::1"), now=0.0)


def test_table_is_bounded() -> None:
    rl = RateLimiter(rate=1.0, burst=1, max_sources=1000)
    for i in range(100_000):
        rl.allow(ipaddress.IPv4Address(i), now=0.0)
    assert len(rl) == 1000
