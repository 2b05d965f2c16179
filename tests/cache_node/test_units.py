"""Unit tests of the cache node's pure parts: keys, ranges, tokens, eviction policies."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache_node.eviction import LRU, S3FIFO, Sieve, make_policy
from cache_node.metrics import Metrics
from cache_node.objkeys import KeyRejectedError, _normalise, normalise
from cache_node.ranges import Span, Validators, parse_range, plan
from cache_node.tokens import (
    Claims,
    TokenRejectedError,
    load_keys,
    parse,
    scope_covers,
    sign,
    verify,
)

# --- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("/vod/a.ts", "vod/a.ts"),
        ("//vod///a.ts", "vod/a.ts"),
        ("/vod/a.ts/", "vod/a.ts"),
        ("/vod/%61.ts", "vod/a.ts"),
        ("/vod/a%20b.ts", "vod/a b.ts"),
        ("/vod/%E2%82%AC.ts", "vod/€.ts"),
        ("/vod/a.ts?token=abc", "vod/a.ts"),
        ("/vod/...", "vod/..."),
        ("/vod/.hidden", "vod/.hidden"),
    ],
)
def test_key_normalisation(raw: str, key: str) -> None:
    assert normalise(raw) == key


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("/../etc/passwd", 400),
        ("/vod/%2e%2e/x", 400),
        ("/vod/%2E/x", 400),
        ("/vod/%2fx", 400),
        ("/vod\\x", 400),
        ("/vod/%5cx", 400),
        ("/vod/x%00", 400),
        ("/vod/x%0a", 400),
        ("/vod/%zz", 400),
        ("/vod/%4", 400),
        ("/vod/%ff", 400),
        ("/", 404),
        ("/" + "a" * 1025, 414),
        ("/" + "a/" * 3000, 414),
    ],
)
def test_key_rejections(raw: str, status: int) -> None:
    with pytest.raises(KeyRejectedError) as info:
        normalise(raw)
    assert info.value.status == status
    assert info.value.reason


def _outcome(fn: object, path: str) -> str | int:
    try:
        return fn(path)  # type: ignore[operator,no-any-return]
    except KeyRejectedError as exc:
        return exc.status


@given(
    st.text(
        alphabet=st.sampled_from([*"ab./%\\?#~-_:@!+,;=2eEfF0", "\x00", "€", " "]),
        max_size=40,
    ),
    st.integers(min_value=0, max_value=1100),
)
def test_fast_path_keys_equal_the_general_normaliser(tail: str, pad: int) -> None:
    """The hit path's shortcut for plain paths never changes what a path means."""
    for path in ("/" + tail, "/" + "k" * pad + tail, "/v/" + tail + "/x"):
        bare = path.partition("?")[0].partition("#")[0]
        assert _outcome(normalise, path) == _outcome(_normalise, bare), path


def test_traffic_counters_are_exposed_as_prometheus_counters() -> None:
    metrics = Metrics()
    metrics.traffic.requests["hit"] += 3
    metrics.traffic.requests["origin"] += 1
    metrics.traffic.bytes["hit"] += 4096
    get = metrics.registry.get_sample_value
    assert get("edgefill_requests_total", {"result": "hit"}) == 3
    assert get("edgefill_requests_total", {"result": "origin"}) == 1
    assert get("edgefill_requests_total", {"result": "error"}) == 0
    assert get("edgefill_served_bytes_total", {"source": "hit"}) == 4096
    assert get("edgefill_served_bytes_total", {"source": "peer"}) == 0


# --- ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "spans"),
    [
        ("bytes=0-0", 10, [Span(0, 1)]),
        ("bytes=2-", 10, [Span(2, 8)]),
        ("bytes=-3", 10, [Span(7, 3)]),
        ("bytes=-30", 10, [Span(0, 10)]),
        ("bytes=0-99", 10, [Span(0, 10)]),
        ("bytes=10-", 10, []),
        ("bytes=-0", 10, []),
        ("bytes=0-0", 0, []),
        ("bytes=-5", 0, None),  # satisfiable, but no 206 can describe an empty part
        ("bytes=0-1,2-3", 10, [Span(0, 4)]),
        ("bytes=5-6, 0-1", 10, [Span(0, 2), Span(5, 2)]),
        ("bytes = 1-2", 10, None),  # no whitespace around "=" (RFC 9110 §14.2)
        ("bytes=1 - 2", 10, None),
        ("bytes=0-1 ,\t3-4", 10, [Span(0, 2), Span(3, 2)]),
        ("bytes=3-1", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=1", 10, None),
        ("pages=1-2", 10, None),
        ("bytes=", 10, None),
        ("bytes=" + ",".join(["0-0"] * 17), 10, None),
        ("bytes=1-2-3", 10, None),
        ("bytes=٣-4", 10, None),  # non-ASCII digits
    ],
)
def test_parse_range(header: str, size: int, spans: list[Span] | None) -> None:
    assert parse_range(header, size) == spans


@given(
    size=st.integers(min_value=0, max_value=10_000),
    first=st.integers(min_value=0, max_value=20_000),
    length=st.integers(min_value=0, max_value=20_000),
)
def test_satisfiable_ranges_stay_inside_the_object(size: int, first: int, length: int) -> None:
    for header in (f"bytes={first}-{first + length}", f"bytes=-{length}", f"bytes={first}-"):
        spans = parse_range(header, size)
        if spans is None:  # only a suffix range on an empty object is ignored
            assert size == 0
            assert header == f"bytes=-{length}"
            assert length > 0
            continue
        for span in spans:
            assert 0 <= span.start <= span.end < size
            assert span.length >= 1


def _obj() -> Validators:
    return Validators(
        size=100, etag='"abc"', last_modified=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    )


def test_plan_orders_preconditions_like_rfc9110() -> None:
    obj = _obj()
    assert plan("GET", {"If-Match": '"zzz"', "If-None-Match": '"abc"'}, obj).status == 412
    assert plan("GET", {"If-None-Match": '"abc"', "Range": "bytes=0-1"}, obj).status == 304
    p = plan("GET", {"Range": "bytes=200-"}, obj)
    assert (p.status, p.headers["Content-Range"]) == (416, "bytes */100")
    p = plan("GET", {"Range": "bytes=-10"}, obj)
    assert (p.status, p.span, p.headers["Content-Range"]) == (206, Span(90, 10), "bytes 90-99/100")
    assert plan("HEAD", {"Range": "bytes=0-1"}, obj).status == 200
    assert plan("GET", {"If-Modified-Since": "Tue, 02 Jan 2024 03:04:05 GMT"}, obj).status == 304
    assert plan("GET", {"If-Modified-Since": "Mon, 01 Jan 2024 03:04:05 GMT"}, obj).status == 200
    assert (
        plan("GET", {"If-Range": "Tue, 02 Jan 2024 03:04:05 GMT", "Range": "bytes=0-1"}, obj).status
        == 206
    )


# --- tokens -------------------------------------------------------------------------------

KEYS = {"a": b"0123456789abcdef0123", "b": b"fedcba9876543210fedc"}


def _tok(
    kid: str = "a", scope: str = "/vod/", exp: int | None = None, nbf: int | None = None
) -> str:
    return sign(
        Claims(kid, exp if exp is not None else int(time.time()) + 60, nbf, scope), KEYS[kid]
    )


def test_token_round_trip_and_scope() -> None:
    now = time.time()
    claims = verify(_tok(), "vod/x.ts", KEYS, now, 0)
    assert claims.scope == "/vod/"
    assert verify(_tok("b", "/vod/x.ts"), "vod/x.ts", KEYS, now, 0).kid == "b"
    assert scope_covers("/vod/a", "/vod/a/b")
    assert not scope_covers("/vod/a", "/vod/ab")
    assert scope_covers("/vod/a*", "/vod/ab")


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda: None, 401, "required"),
        (lambda: _tok()[:-2] + "00", 403, "signature"),
        (lambda: _tok(exp=int(time.time()) - 100), 403, "expired"),
        (lambda: _tok(nbf=int(time.time()) + 100), 403, "not yet"),
        (lambda: _tok(scope="/other/"), 403, "scope"),
        (lambda: _tok().replace("kid=a", "kid=b"), 403, "signature"),
        (lambda: "kid=a~exp=1~hmac=" + "0" * 64, 403, "acl"),
        (lambda: _tok().replace("~acl=", "~acl=%2F~acl="), 403, "twice"),
        (lambda: _tok().replace("~acl=", "~ip=1~acl="), 403, "unknown"),
        (lambda: "garbage", 403, "hmac"),
        (lambda: "x" * 5000, 403, "malformed"),
    ],
)
def test_token_rejections(make: object, status: int, reason: str) -> None:
    assert callable(make)
    with pytest.raises(TokenRejectedError) as info:
        verify(make(), "vod/x.ts", KEYS, time.time(), 0)
    assert info.value.status == status
    assert reason in info.value.reason


def test_token_scope_cannot_smuggle_fields() -> None:
    # A scope containing the delimiter is percent-encoded, so it stays one field.
    token = sign(Claims("a", int(time.time()) + 60, None, "/vod/~exp=9999999999"), KEYS["a"])
    claims, _, _ = parse(token)
    assert claims.scope == "/vod/~exp=9999999999"
    assert token.count("~") == 3


def test_clock_skew_is_tolerated_both_ways() -> None:
    now = time.time()
    assert verify(_tok(exp=int(now) - 10), "vod/x", KEYS, now, 30)
    assert verify(_tok(nbf=int(now) + 10), "vod/x", KEYS, now, 30)


def test_load_keys(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "..data").mkdir()
    (folder / "k1").write_bytes(b"0123456789abcdef\n")
    assert load_keys(folder) == {"k1": b"0123456789abcdef"}
    (folder / "k2").write_bytes(b"0123456789abcdef")
    (folder / "k3").write_bytes(b"0123456789abcdef")
    with pytest.raises(ValueError, match="at most 2"):
        load_keys(folder)
    (folder / "k3").write_bytes(b"short")
    with pytest.raises(ValueError, match="shorter"):
        load_keys(folder)


# --- eviction -----------------------------------------------------------------------------


def test_lru_evicts_least_recently_used() -> None:
    lru = LRU()
    for k in "abc":
        lru.insert(k, 1)
    lru.hit("a")
    assert [lru.victim(), lru.victim(), lru.victim(), lru.victim()] == ["b", "c", "a", None]


def test_sieve_keeps_visited_objects() -> None:
    s = Sieve()
    for k in "abcd":
        s.insert(k, 1)
    s.hit("a")
    s.hit("c")
    assert s.victim() == "b"
    assert s.victim() == "d"
    assert s.victim() in ("a", "c")
    s.remove("a")
    s.remove("c")
    assert s.victim() is None
    assert len(s) == 0


def test_s3fifo_is_scan_resistant() -> None:
    cap = 100
    s = S3FIFO(cap)
    resident: set[str] = set()

    def insert(key: str) -> None:
        if key in s:
            s.hit(key)
            return
        s.insert(key, 1)
        resident.add(key)
        while len(resident) > cap:
            victim = s.victim()
            assert victim is not None
            resident.discard(victim)

    hot = [f"hot{i}" for i in range(50)]
    for _ in range(3):
        for k in hot:
            insert(k)
    for i in range(1000):  # a one-pass scan
        insert(f"scan{i}")
    assert all(k in resident for k in hot)


@pytest.mark.parametrize("name", ["lru", "sieve", "s3fifo"])
def test_every_policy_evicts_everything_once(name: str) -> None:
    p = make_policy(name, 10)  # type: ignore[arg-type]
    keys = [f"k{i}" for i in range(20)]
    for k in keys:
        p.insert(k, 1)
        p.hit(k)
    out = []
    while (v := p.victim()) is not None:
        out.append(v)
    assert sorted(out) == sorted(keys)


def test_negative_cache_expires_and_is_bounded() -> None:
    from cache_node.loader import NegativeCache

    cache = NegativeCache(max_entries=3)
    cache.add("a", now=100.0, ttl=10.0)
    assert cache.holds("a", 109.9)
    assert not cache.holds("a", 110.0)  # expired entries are dropped when met
    assert len(cache) == 0
    cache.add("off", now=100.0, ttl=0.0)  # TTL 0: negative caching off
    assert not cache.holds("off", 100.0)
    for key in "bcde":
        cache.add(key, now=100.0, ttl=10.0)
    assert len(cache) == 3
    assert not cache.holds("b", 101.0)  # the oldest went first
    assert all(cache.holds(k, 101.0) for k in "cde")
    cache.discard("c")
    assert not cache.holds("c", 101.0)


async def test_a_fill_that_is_born_ended_wakes_every_waiter() -> None:
    """A remembered 404 (``Fill.not_found``) is already ended: waiting for its body or
    its end returns at once, as for a fill that ended after it started."""
    import asyncio

    from cache_node.loader import Fill

    fill = Fill.not_found("vod/gone.bin")
    assert fill.done
    assert fill.error is not None
    assert fill.error.not_found
    await asyncio.wait_for(fill.wait_body(), 5)
    await asyncio.wait_for(fill.wait_done(), 5)
    assert not fill.body_in
