"""The client port's fast lane (cache_node.fastlane): same answers, in order, or none.

A live node in front of the S3 test server, served as ``python -m cache_node``
serves it (the conftest's ``live_node``). Requests go over raw sockets where
pipelining and connection handling are the point. ``edgefill_fast_lane_responses_total``
(``traffic.fast_lane``) tells which path answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from cache_node.config import NodeConfig
from cache_node.fastlane import routed_elsewhere, unrecognized_method
from cache_node.serve import handle_object
from edgefill_devenv.origin_proxy import OriginProxy

from .conftest import Bucket, LiveNode, live_node, make_token, until

pytestmark = pytest.mark.integration

SMALL = "vod/small.bin"  # 3000 bytes: held in memory after its first hit
SEG = "vod/title/seg-2.m4s"  # 64 KiB
PER_REQUEST = ("Date", "Age")  # the only headers that may differ between two answers


def _lane(node: LiveNode) -> int:
    return int(node.apps.node.metrics.traffic.fast_lane)


async def _warm(node: LiveNode, *keys: str) -> None:
    """Fill ``keys`` and serve each once more, so its bytes are in the memory tier."""
    async with aiohttp.ClientSession() as s:
        for key in keys:
            async with s.get(f"{node.client_url}/{key}") as resp:
                assert resp.status == 200
                await resp.read()
            await until(lambda k=key: k in node.store, f"{key} committed")  # type: ignore[misc]
            async with s.get(f"{node.client_url}/{key}") as resp:
                assert resp.status == 200
                await resp.read()


async def _exchange(
    url: str, data: bytes, methods: list[str]
) -> list[tuple[int, CIMultiDict[str], bytes]]:
    """Write ``data`` (one or more requests) at once; read one answer per method."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    answers = []
    try:
        writer.write(data)
        await writer.drain()
        for method in methods:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            lines = head.decode("latin-1").split("\r\n")
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.add(name.strip(), value.strip())
            status = int(lines[0].split()[1])
            length = 0 if method == "HEAD" or status == 304 else int(headers["Content-Length"])
            body = await asyncio.wait_for(reader.readexactly(length), 20)
            answers.append((status, headers, body))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


def _get(key: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} /{key} HTTP/1.1\r\nHost: edge\r\n{extra}\r\n".encode()


def _without(headers: CIMultiDict[str], names: tuple[str, ...]) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in headers.items() if k not in names)


async def test_plain_hits_take_the_fast_lane_with_the_full_paths_answer(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with live_node(config_for(proxy.endpoint_url, bucket.name)) as node:
        await _warm(node, SMALL)
        before = _lane(node)
        # Pipelined: the plain GET and HEAD on the idle connection take the fast lane;
        # an If-None-Match that does not match is a 200 from the full path (ranges.plan).
        fast, head, full = await _exchange(
            node.client_url,
            _get(SMALL) + _get(SMALL, "HEAD") + _get(SMALL, extra='If-None-Match: "other"\r\n'),
            ["GET", "HEAD", "GET"],
        )
        assert _lane(node) == before + 2  # the plain GET and the HEAD
        assert full[0] == fast[0] == head[0] == 200
        assert fast[2] == full[2] == bucket.objects[SMALL]
        assert _without(fast[1], PER_REQUEST) == _without(full[1], PER_REQUEST)
        assert _without(head[1], PER_REQUEST) == _without(full[1], PER_REQUEST)
        assert head[2] == b""
        assert fast[1]["Content-Length"] == str(len(bucket.objects[SMALL]))
        assert fast[1]["X-EdgeFill-Result"] == "hit"
        assert int(fast[1]["Age"]) >= 0
        assert fast[1]["Date"].endswith(" GMT")
        assert proxy.object_gets(SMALL) == 1


async def test_pipelined_requests_keep_their_order_across_both_paths(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with live_node(config_for(proxy.endpoint_url, bucket.name)) as node:
        await _warm(node, SMALL, SEG)
        before = _lane(node)
        answers = await _exchange(
            node.client_url,
            _get(SMALL)  # fast lane
            + _get(SMALL, extra="Range: bytes=10-19\r\n")  # full path: a Range
            + _get(SEG)  # queued behind it: the full path, in order
            + _get("vod/not-there.bin")  # a miss: 404 from the origin
            + _get(SMALL, "HEAD"),
            ["GET", "GET", "GET", "GET", "HEAD"],
        )
        assert [a[0] for a in answers] == [200, 206, 200, 404, 200]
        small, seg = bucket.objects[SMALL], bucket.objects[SEG]
        assert answers[0][2] == small
        assert answers[1][2] == small[10:20]
        assert answers[1][1]["Content-Range"] == f"bytes 10-19/{len(small)}"
        assert answers[2][2] == seg
        assert answers[4][2] == b""
        assert _lane(node) >= before + 1  # the first; the rest as the connection allowed
        # On an idle connection again, a plain hit goes the fast way.
        lane = _lane(node)
        (again,) = await _exchange(node.client_url, _get(SEG), ["GET"])
        assert again[0] == 200
        assert again[2] == seg
        assert _lane(node) == lane + 1


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (b"GET /vod/small.bin HTTP/1.0\r\n\r\n", "HTTP/1.0"),
        (b"GET /vod/small.bin HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n", "close"),
        (b"GET http://edge/vod/small.bin HTTP/1.1\r\nHost: edge\r\n\r\n", "absolute-form"),
        (b"GET /vod/small.bin HTTP/1.1\r\nHost: edge\r\nIf-None-Match: *\r\n\r\n", "conditional"),
        (b"GET /vod/%2e%2e/small.bin HTTP/1.1\r\nHost: edge\r\n\r\n", "dot segment"),
        (b"GET /vod/small.bin HTTP/1.1\r\n\r\n", "no Host"),
        (b"GET /vod/small.bin HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two Hosts"),
        (b"POST /vod/small.bin HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\n\r\nhi", "POST"),
        (b"GET /vod/small.bin HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\n\r\nhi", "a body"),
    ],
)
async def test_what_the_fast_lane_leaves_to_the_full_path(
    request_bytes: bytes,
    why: str,
    bucket: Bucket,
    proxy: OriginProxy,
    config_for: Callable[..., NodeConfig],
) -> None:
    async with live_node(config_for(proxy.endpoint_url, bucket.name)) as node:
        await _warm(node, SMALL)
        before = _lane(node)
        ((status, _, body),) = await _exchange(node.client_url, request_bytes, ["GET"])
        assert _lane(node) == before, why
        expected = {
            "conditional": 304,
            "dot segment": 400,
            "no Host": 400,
            "two Hosts": 400,
            "POST": 405,
        }.get(why, 200)
        assert status == expected, (why, status, body)
        if expected == 200:
            assert body == bucket.objects[SMALL]


async def test_the_fast_lane_checks_tokens_and_leaves_refusals_to_the_full_path(
    bucket: Bucket,
    proxy: OriginProxy,
    config_for: Callable[..., NodeConfig],
    token_dir: Path,
) -> None:
    cfg = config_for(proxy.endpoint_url, bucket.name, tokens_dir=token_dir)
    async with live_node(cfg) as node, aiohttp.ClientSession() as s:
        good = make_token(scope="/vod/")
        other = quote(make_token(scope="/other/"), safe="")
        forged = make_token(scope="/vod/", secret=b"f" * 32)
        for _ in range(2):  # fill, then into memory
            async with s.get(f"{node.client_url}/{SMALL}", params={"token": good}) as resp:
                assert resp.status == 200
                await resp.read()
            await until(lambda: SMALL in node.store, "committed")
        before = _lane(node)
        answers = await _exchange(
            node.client_url,
            _get(f"{SMALL}?token={quote(good, safe='')}")  # fast lane
            + _get(SMALL)  # no token: 401, and the rest queue behind it (full path)
            + _get(f"{SMALL}?token={other}")  # wrong scope: 403
            + _get(SMALL, extra=f"X-EdgeFill-Token: {forged}\r\n")  # forged
            + _get(SMALL, extra=f"X-EdgeFill-Token: {good}\r\n"),
            ["GET"] * 5,
        )
        assert [a[0] for a in answers] == [200, 401, 403, 403, 200]
        assert answers[1][1]["WWW-Authenticate"].startswith("EdgeFill-Token")
        assert answers[0][2] == answers[4][2] == bucket.objects[SMALL]
        assert _lane(node) == before + 1
        # Alone on an idle connection, a good token in the header is a fast-lane hit.
        lane = _lane(node)
        (hit,) = await _exchange(
            node.client_url, _get(SMALL, extra=f"X-EdgeFill-Token: {good}\r\n"), ["GET"]
        )
        assert hit[0] == 200
        assert _lane(node) == lane + 1
        assert proxy.object_gets(SMALL) == 1


async def test_a_long_pipeline_of_hits_is_answered_whole(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    """More requests in one write than aiohttp queues (it pauses reading at 32): the lane
    drains the queue, so reading must resume from it, and every answer comes back."""
    async with live_node(config_for(proxy.endpoint_url, bucket.name)) as node:
        await _warm(node, SMALL, SEG)
        before = _lane(node)
        keys = [SMALL if i % 3 else SEG for i in range(150)]
        answers = await _exchange(
            node.client_url, b"".join(_get(k) for k in keys), ["GET"] * len(keys)
        )
        assert [a[2] for a in answers] == [bucket.objects[k] for k in keys]
        assert _lane(node) == before + len(keys)


def test_paths_the_client_app_routes_elsewhere_are_never_the_lanes() -> None:
    """The tracker adds /announce, /scrape, /manifest/{key} ahead of the object view:
    the router sends those paths there, so the lane must not answer them from the
    store even when an object has such a key."""

    async def other(request: web.Request) -> web.StreamResponse:
        return web.Response()

    app = web.Application()
    app.router.add_get("/announce", other)
    app.router.add_get("/manifest/{key:.+}", other)
    app.router.add_route("*", "/{key:.*}", handle_object)
    claimed = routed_elsewhere(app, handle_object)
    assert claimed("/announce")
    assert claimed("/manifest/vod/a.bin")
    assert not claimed("/manifest")
    assert not claimed("/vod/announce")
    assert not claimed("/vod/a.bin")
    app.router.add_static("/static", Path(__file__).parent)
    assert routed_elsewhere(app, handle_object)("/vod/a.bin")  # unknown kind: claim all


def test_a_refused_method_is_read_from_the_parsers_error_only_on_a_well_formed_line() -> None:
    """501 needs a request line that is well formed but for its method; everything else
    the parser refuses stays its 400 (``None`` here)."""

    def refused(line: bytes) -> str:
        return f"Invalid method encountered:\n\n  {line!r}\n     ^"

    assert unrecognized_method(refused(b"BREW /pot HTTP/1.1")) == "BREW"
    assert unrecognized_method(refused(b"get /a?b='c' HTTP/1.0")) == "get"
    assert unrecognized_method(refused(b"M-SEARCH * HTTP/1.1")) == "M-SEARCH"
    assert unrecognized_method(refused(b"GE(T / HTTP/1.1")) is None  # not a token
    assert unrecognized_method(refused(b"BREW /pot HTTP/2.0")) is None  # not HTTP/1.x
    assert unrecognized_method(refused(b"BREW  /pot HTTP/1.1")) is None  # two spaces
    assert unrecognized_method(refused(b"BREW /p\x00t HTTP/1.1")) is None  # a control byte
    assert unrecognized_method("Received HTTPS traffic on an HTTP port") is None
    assert unrecognized_method(None) is None
