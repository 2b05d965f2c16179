"""HTTP conformance of the client and peer ports (RFC 9110, RFC 9111, RFC 9112).

A live node in front of the S3 test server (through the counting origin
proxy). Where a client library would hide what is on the wire (a body after a
304, the connection closing, the request-target form), requests are written
to a raw socket and the answer is read until the server closes.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from cache_node import origin as origin_module
from cache_node import serve
from cache_node.app import create_apps
from cache_node.config import NodeConfig
from cache_node.ranges import format_http_date
from edgefill_devenv.origin_proxy import OriginProxy

from .conftest import PEER_SECRET, Bucket, KiB, LiveNode, live_node, until

pytestmark = pytest.mark.integration

KEY = "vod/medium.bin"  # 200 KiB + 17: several pieces, served by sendfile when memory is off
SMALL = "vod/small.bin"
EMPTY = "vod/empty.bin"
REPRESENTATION = ("Content-Length", "Content-Type", "ETag", "Last-Modified", "Cache-Control")


@dataclass
class Raw:
    status_line: str
    status: int
    headers: CIMultiDict[str]
    body: bytes


async def raw_request(url: str, data: bytes) -> Raw:
    """Send ``data`` as is and read the answer until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return Raw(lines[0], int(lines[0].split()[1]), headers, body)


def _is_http_date(value: str | None) -> bool:
    if value is None:
        return False
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return value.endswith(" GMT")


async def _fill(s: aiohttp.ClientSession, node: LiveNode, *keys: str) -> None:
    for key in keys:
        async with s.get(f"{node.client_url}/{key}") as resp:
            assert resp.status == 200
            await resp.read()
        await until(lambda k=key: k in node.store, f"{key} committed")  # type: ignore[misc]


def _memory_tier(cfg: NodeConfig, on: bool) -> NodeConfig:
    """``on``: small objects from memory; off: every hit through sendfile."""
    if on:
        return cfg
    return cfg.model_copy(update={"store": cfg.store.model_copy(update={"memory_tier_bytes": 0})})


def _validators(node: LiveNode, key: str) -> tuple[str, datetime]:
    entry = node.store.peek(key)
    return entry.meta.info.etag, datetime.fromtimestamp(int(entry.meta.info.last_modified), UTC)


# --- methods, Date and error bodies ---------------------------------------------------------


async def test_methods_date_and_error_bodies(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with (
        live_node(config_for(proxy.endpoint_url, bucket.name)) as node,
        aiohttp.ClientSession() as s,
    ):
        url = f"{node.client_url}/{KEY}"
        for method in ("PUT", "DELETE", "POST", "PATCH", "TRACE"):
            async with s.request(
                method, url, data=b"x" if method in ("PUT", "POST") else None
            ) as r:
                body = await r.text()
                assert r.status == 405, method
                allow = {m.strip() for m in r.headers["Allow"].split(",")}
                assert {"GET", "HEAD"} <= allow, method
                assert r.headers["Content-Type"].startswith("text/plain")
                assert method in body
                assert _is_http_date(r.headers.get("Date"))
        async with s.options(url) as r:
            assert r.status == 204
            assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "HEAD", "OPTIONS"}
            assert await r.read() == b""
            assert _is_http_date(r.headers.get("Date"))
        # Nothing above reached the origin: only GET and HEAD look up or fill.
        assert proxy.total_gets() == 0

        # A method the server does not recognize is 501 (RFC 9110 9.1, 15.6.2), whether
        # aiohttp's parser knows it (PROPFIND) or refuses it before routing (BREW, and
        # "get": methods are case-sensitive). A line that is not a request stays 400.
        for method in (b"BREW", b"get", b"PROPFIND"):
            raw = await raw_request(
                node.client_url,
                method + b" /vod/medium.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            assert raw.status == 501, (method, raw.status_line)
            assert raw.headers["Content-Type"].startswith("text/plain")
            assert method.decode() in raw.body.decode(), raw.body
            assert _is_http_date(raw.headers.get("Date"))
        for garbage in (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GE(T / HTTP/1.1\r\n\r\n",
        ):
            raw = await raw_request(node.client_url, garbage)
            assert raw.status == 400, (garbage, raw.status_line)

        # Every answer carries Date; every error a text/plain reason (HEAD: no body).
        etag = None
        for method, path, headers, status in [
            ("GET", KEY, {}, 200),  # miss
            ("GET", KEY, {}, 200),  # hit
            ("HEAD", KEY, {}, 200),
            ("GET", KEY, {"If-None-Match": "*"}, 304),
            ("GET", KEY, {"If-Match": '"nope"'}, 412),
            ("GET", KEY, {"Range": "bytes=999999999-"}, 416),
            ("GET", "vod/absent.bin", {}, 404),
            ("GET", "vod/%2e%2e/x", {}, 400),
            ("GET", "vod/a%2Fb", {}, 400),
            ("GET", "a" * 5000, {}, 414),
        ]:
            target = URL(f"{node.client_url}/{path}", encoded=True)  # sent as written
            async with s.request(method, target, headers=headers) as r:
                body = await r.read()
                assert r.status == status, (method, path, headers, r.status)
                assert _is_http_date(r.headers.get("Date")), (path, headers)
                if status >= 400:
                    assert r.headers["Content-Type"].startswith("text/plain"), (path, status)
                    assert method == "HEAD" or len(body.strip()) > 5, (path, status)
                if status in (200, 206):
                    assert "Content-Type" in r.headers
                    etag = etag or r.headers["ETag"]
                    assert r.headers["ETag"] == etag
            await until(lambda: KEY in node.store, "committed")


async def test_peer_port_methods_and_auth(tmp_path: Path, bucket: Bucket) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(PEER_SECRET)
    from .conftest import node_config

    cfg = node_config(
        tmp_path / "store",
        bucket.server.endpoint_url,
        bucket.name,
        peering={"secretFile": str(secret), "digestRefreshSeconds": 3600},
    )
    async with _peer_node(cfg) as (peer_url, _), aiohttp.ClientSession() as s:
        url = f"{peer_url}/peer/v1/objects/{KEY}"
        auth = {"Authorization": f"Bearer {PEER_SECRET.decode()}"}
        async with s.get(url) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert _is_http_date(r.headers.get("Date"))
        async with s.delete(url, headers=auth) as r:
            assert r.status == 405
            assert "GET" in r.headers["Allow"]
        async with s.options(url, headers=auth) as r:
            assert r.status == 204
            assert "HEAD" in r.headers["Allow"]
        async with s.get(url, headers=auth) as r:
            assert r.status == 200
            assert await r.read() == bucket.objects[KEY]
        async with s.head(url, headers={**auth, "Range": "bytes=0-9"}) as r:
            assert r.status == 200  # Range is defined for GET only (§14.2)
            assert r.headers["Content-Length"] == str(len(bucket.objects[KEY]))
            assert await r.read() == b""


@asynccontextmanager
async def _peer_node(cfg: NodeConfig) -> AsyncIterator[tuple[str, object]]:
    apps = create_apps(cfg, "node-0")
    runners: list[web.AppRunner] = []
    try:
        urls = []
        for app in (apps.client, apps.peer):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        await until(lambda: apps.node.ready, "node ready")
        yield urls[1], apps
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


# --- HEAD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("memory_tier", [True, False])
async def test_head_has_the_headers_of_get_and_no_body(
    memory_tier: bool, bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with (
        live_node(_memory_tier(config_for(proxy.endpoint_url, bucket.name), memory_tier)) as node,
        aiohttp.ClientSession() as s,
    ):
        await _fill(s, node, KEY)
        etag, lm = _validators(node, KEY)
        for path in ("miss", "hit"):
            for headers in (
                {},
                {"Range": "bytes=0-9"},
                {"If-None-Match": etag},
                {"If-Modified-Since": format_http_date(lm)},
                {"If-Range": etag, "Range": "bytes=5-"},
            ):
                answers = {}
                for method in ("HEAD", "GET"):
                    await until(lambda: node.apps.node.loader.in_progress() == 0, "idle")
                    if path == "miss":
                        node.store.remove(KEY)
                    async with s.request(method, f"{node.client_url}/{KEY}", headers=headers) as r:
                        answers[method] = (r.status, CIMultiDict(r.headers), await r.read())
                h_status, h_headers, h_body = answers["HEAD"]
                g_status, g_headers, g_body = answers["GET"]
                assert h_body == b""
                assert h_headers["X-EdgeFill-Result"] == g_headers["X-EdgeFill-Result"]
                if "Range" in headers:  # HEAD ignores Range; GET answers 206
                    assert (h_status, g_status) == (200, 206), (path, headers)
                    assert h_headers["Content-Length"] == str(len(bucket.objects[KEY]))
                    assert "Content-Range" not in h_headers
                    continue
                assert h_status == g_status, (path, headers)
                for name in (*REPRESENTATION, "Accept-Ranges"):
                    assert h_headers.get(name) == g_headers.get(name), (path, headers, name)
                if g_status == 200:
                    assert g_headers["Content-Length"] == str(len(g_body))


# --- ranges and preconditions beyond the table in test_ranges_http ---------------------------


async def test_range_and_precondition_edges(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with (
        live_node(config_for(proxy.endpoint_url, bucket.name)) as node,
        aiohttp.ClientSession() as s,
    ):
        await _fill(s, node, KEY, EMPTY)
        data = bucket.objects[KEY]
        n = len(data)
        etag, lm = _validators(node, KEY)
        weak = "W/" + etag
        lm_s = format_http_date(lm)
        second_later = format_http_date(lm + timedelta(seconds=1))
        second_earlier = format_http_date(lm - timedelta(seconds=1))
        # (headers, status, body span or None, extra expected headers)
        table: list[tuple[str, dict[str, str], int, tuple[int, int] | None, dict[str, str]]] = [
            (
                "first byte",
                {"Range": "bytes=0-0"},
                206,
                (0, 0),
                {"Content-Range": f"bytes 0-0/{n}"},
            ),
            ("suffix zero", {"Range": "bytes=-0"}, 416, None, {"Content-Range": f"bytes */{n}"}),
            ("past end clamped", {"Range": f"bytes={n - 2}-{n * 3}"}, 206, (n - 2, n - 1), {}),
            ("space around =", {"Range": "bytes = 0-4"}, 200, (0, n - 1), {}),
            ("space in spec", {"Range": "bytes=0 - 4"}, 200, (0, n - 1), {}),
            ("OWS around comma", {"Range": "bytes=0-4 , 5-9"}, 206, (0, 9), {}),
            ("unknown unit", {"Range": "lines=0-4"}, 200, (0, n - 1), {}),
            ("If-Range without Range", {"If-Range": '"other"'}, 200, (0, n - 1), {}),
            ("If-Range weak", {"If-Range": weak, "Range": "bytes=0-4"}, 200, (0, n - 1), {}),
            ("If-Range date exact", {"If-Range": lm_s, "Range": "bytes=0-4"}, 206, (0, 4), {}),
            (
                "If-Range date later",
                {"If-Range": second_later, "Range": "bytes=0-4"},
                200,
                (0, n - 1),
                {},
            ),
            (
                "If-Range date earlier",
                {"If-Range": second_earlier, "Range": "bytes=0-4"},
                200,
                (0, n - 1),
                {},
            ),
            (
                "If-Range garbage",
                {"If-Range": "tomorrow", "Range": "bytes=0-4"},
                200,
                (0, n - 1),
                {},
            ),
            (
                "If-Range + unsatisfiable",
                {"If-Range": etag, "Range": f"bytes={n}-"},
                416,
                None,
                {"Content-Range": f"bytes */{n}"},
            ),
            ("INM weak list", {"If-None-Match": f'W/"a", {weak}'}, 304, None, {"ETag": etag}),
            (
                "INM beats IMS (match)",
                {"If-None-Match": etag, "If-Modified-Since": second_earlier},
                304,
                None,
                {},
            ),
            (
                "INM beats IMS (no match)",
                {"If-None-Match": '"x"', "If-Modified-Since": lm_s},
                200,
                (0, n - 1),
                {},
            ),
            ("IM beats INM", {"If-Match": '"x"', "If-None-Match": etag}, 412, None, {}),
            ("IM list match", {"If-Match": f'"x", {etag}'}, 200, (0, n - 1), {}),
            (
                "IM match ignores IUS",
                {"If-Match": etag, "If-Unmodified-Since": second_earlier},
                200,
                (0, n - 1),
                {},
            ),
            ("IUS later", {"If-Unmodified-Since": second_later}, 200, (0, n - 1), {}),
            ("IUS garbage ignored", {"If-Unmodified-Since": "soon"}, 200, (0, n - 1), {}),
            ("IMS one second earlier", {"If-Modified-Since": second_earlier}, 200, (0, n - 1), {}),
            ("304 beats Range", {"If-None-Match": etag, "Range": "bytes=0-4"}, 304, None, {}),
        ]
        failures = []
        for name, headers, status, span, expect in table:
            async with s.get(f"{node.client_url}/{KEY}", headers=headers) as r:
                body = await r.read()
                problems = []
                if r.status != status:
                    problems.append(f"status {r.status}")
                for h, v in expect.items():
                    if r.headers.get(h) != v:
                        problems.append(f"{h}={r.headers.get(h)!r}")
                if span is not None and body != data[span[0] : span[1] + 1]:
                    problems.append(f"body of {len(body)} bytes")
                if status in (412, 416) and not r.headers.get("Content-Type", "").startswith(
                    "text/plain"
                ):
                    problems.append("error without a text/plain reason")
                if problems:
                    failures.append(f"{name}: {', '.join(problems)}")
        # An empty object: a suffix range is satisfiable yet has no 206 form: 200, empty.
        async with s.get(f"{node.client_url}/{EMPTY}", headers={"Range": "bytes=-5"}) as r:
            if (r.status, await r.read()) != (200, b""):
                failures.append(f"empty object suffix range: {r.status}")
        assert not failures, "\n".join(failures)


async def test_304_has_validators_and_nothing_else_on_the_wire(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with (
        live_node(config_for(proxy.endpoint_url, bucket.name)) as node,
        aiohttp.ClientSession() as s,
    ):
        await _fill(s, node, KEY)
        etag, lm = _validators(node, KEY)
        async with s.get(f"{node.client_url}/{KEY}") as r:
            full = CIMultiDict(r.headers)
            await r.read()
        for cond in (f"If-None-Match: {etag}", f"If-Modified-Since: {format_http_date(lm)}"):
            raw = await raw_request(
                node.client_url,
                f"GET /{KEY} HTTP/1.1\r\nHost: x\r\n{cond}\r\nConnection: close\r\n\r\n".encode(),
            )
            assert raw.status == 304, cond
            assert raw.body == b""
            for name in ("ETag", "Cache-Control", "Last-Modified"):
                assert raw.headers.get(name) == full[name], (cond, name)
            assert _is_http_date(raw.headers.get("Date"))
            assert int(raw.headers["Age"]) >= 0
            # §8.6: a Content-Length on a 304 may only repeat the 200's.
            assert (
                raw.headers.get("Content-Length", full["Content-Length"]) == full["Content-Length"]
            )
            assert "Content-Type" not in raw.headers
            assert "Transfer-Encoding" not in raw.headers


async def test_age_on_hits_and_misses(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with (
        live_node(config_for(proxy.endpoint_url, bucket.name)) as node,
        aiohttp.ClientSession() as s,
    ):
        async with s.get(f"{node.client_url}/{SMALL}") as r:
            await r.read()
            assert r.headers["Age"] == "0"
        await until(lambda: SMALL in node.store, "committed")
        entry = node.store.peek(SMALL)
        # Pretend the object was stored an hour ago: Age counts from the fill.
        object.__setattr__(entry.meta, "stored_at", entry.meta.stored_at - 3600)
        async with s.get(f"{node.client_url}/{SMALL}") as r:
            await r.read()
            assert r.headers["X-EdgeFill-Result"] == "hit"
            assert 3600 <= int(r.headers["Age"]) < 3600 + 60


# --- request targets and connections (RFC 9112) ----------------------------------------------


async def test_request_targets(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with (
        live_node(config_for(proxy.endpoint_url, bucket.name)) as node,
        aiohttp.ClientSession() as s,
    ):
        data = bucket.objects[SMALL]
        # absolute-form (§3.2.2): the same key as origin-form
        raw = await raw_request(
            node.client_url,
            f"GET http://cdn.example/{SMALL}?x=1 HTTP/1.1\r\nHost: cdn.example\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert raw.status == 200
        assert raw.body == data
        await until(lambda: SMALL in node.store, "committed")
        # query strings are never part of the key: one origin GET for every spelling
        for query in ("?a=1", "?b=2&c", "?", "?token=whatever"):
            async with s.get(f"{node.client_url}/{SMALL}{query}") as r:
                assert (r.status, await r.read()) == (200, data), query
                assert r.headers["X-EdgeFill-Result"] == "hit"
        assert proxy.object_gets(SMALL) == 1
        # an encoded slash is refused, with a reason
        async with s.get(f"{node.client_url}/vod%2Fsmall.bin") as r:
            assert r.status == 400
            assert "%2F" in await r.text()
        # very long targets: our limit (414), then the HTTP parser's line limit (400)
        for length, statuses in ((5000, (414,)), (9000, (400, 414))):
            raw = await raw_request(
                node.client_url,
                f"GET /{'a' * length} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
            )
            assert raw.status in statuses, length
            assert raw.body.strip(), "an error without a reason"
        assert proxy.total_gets() == 1


@pytest.mark.parametrize(
    ("host_lines", "version", "status"),
    [
        ("", "1.1", 400),  # no Host
        ("Host: a\r\nHost: b\r\n", "1.1", 400),  # two
        ("Host: a b\r\n", "1.1", 400),  # not a uri-host
        ("Host: cdn/x\r\n", "1.1", 400),
        ("Host: cdn.example:8080\r\n", "1.1", 200),
        ("Host: [::1]:80\r\n", "1.1", 200),
        ("Host: \r\n", "1.1", 200),  # empty: a target without an authority (§3.2)
        ("", "1.0", 200),  # HTTP/1.0 needs none
    ],
)
async def test_host_header_rules(
    host_lines: str,
    version: str,
    status: int,
    bucket: Bucket,
    proxy: OriginProxy,
    config_for: Callable[..., NodeConfig],
) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without exactly
    one valid Host, for hits (the fast lane too) and misses alike."""
    async with live_node(config_for(proxy.endpoint_url, bucket.name)) as node:
        for _ in ("miss", "hit", "hit from memory"):
            raw = await raw_request(
                node.client_url,
                f"GET /{SMALL} HTTP/{version}\r\n{host_lines}Connection: close\r\n\r\n".encode(),
            )
            assert raw.status == status, raw.body
            if status == 400:
                assert b"Host" in raw.body
            else:
                assert raw.body == bucket.objects[SMALL]
            if status == 200:
                await until(lambda: SMALL in node.store, "committed")
        if status == 400:
            assert proxy.total_gets() == 0


async def test_asterisk_form_is_the_server_wide_options(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    """RFC 9112 §3.2.4 / RFC 9110 §9.3.7: ``OPTIONS *`` describes the server; the
    asterisk-form with any other method is not a request for a resource."""
    async with live_node(config_for(proxy.endpoint_url, bucket.name)) as node:
        raw = await raw_request(
            node.client_url, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert raw.status == 204
        assert {m.strip() for m in raw.headers["Allow"].split(",")} == {"GET", "HEAD", "OPTIONS"}
        assert raw.body == b""
        raw = await raw_request(
            node.client_url, b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert raw.status == 400  # from aiohttp's parser
        assert proxy.total_gets() == 0


@pytest.mark.parametrize("memory_tier", [True, False])
async def test_http10_and_connection_close(
    memory_tier: bool, bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    cfg = _memory_tier(config_for(proxy.endpoint_url, bucket.name), memory_tier)
    async with live_node(cfg) as node:
        data = bucket.objects[KEY]
        for result in ("miss", "hit"):
            # HTTP/1.0 without keep-alive: a framed body, then the server closes
            raw = await raw_request(node.client_url, f"GET /{KEY} HTTP/1.0\r\n\r\n".encode())
            assert raw.status == 200
            assert raw.headers["X-EdgeFill-Result"] == result
            assert "Transfer-Encoding" not in raw.headers  # no chunked for 1.0 (§7.1)
            assert raw.headers["Content-Length"] == str(len(data))
            assert raw.body == data
            await until(lambda: KEY in node.store, "committed")
        raw = await raw_request(
            node.client_url, f"GET /{KEY} HTTP/1.0\r\nRange: bytes=10-19\r\n\r\n".encode()
        )
        assert (raw.status, raw.body) == (206, data[10:20])
        # HTTP/1.1 with Connection: close: the server says so and closes after the answer
        raw = await raw_request(
            node.client_url,
            f"GET /{KEY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        )
        assert raw.status == 200
        assert raw.headers["Connection"].lower() == "close"
        assert raw.body == data
        # keep-alive: two pipelined requests (HEAD then GET) framed correctly on one connection
        raw = await raw_request(
            node.client_url,
            (
                f"HEAD /{KEY} HTTP/1.1\r\nHost: x\r\n\r\n"
                f"GET /{KEY} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\n"
                "Connection: close\r\n\r\n"
            ).encode(),
        )
        assert raw.status == 200
        assert raw.headers["Content-Length"] == str(len(data))
        second_head, _, second_body = raw.body.partition(b"\r\n\r\n")
        assert second_head.startswith(b"HTTP/1.1 206")
        assert second_body == data[:4]


# --- origin 404: negative cache -------------------------------------------------------------


async def test_origin_404_is_a_404_and_is_remembered(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    missing = "vod/not-yet.bin"
    cfg = config_for(proxy.endpoint_url, bucket.name, serving={"notFoundTtlSeconds": 600})
    async with live_node(cfg) as node, aiohttp.ClientSession() as s:
        url = f"{node.client_url}/{missing}"
        proxy.stall(missing, 0.3)  # the first fill stays open while the crowd arrives

        async def get() -> tuple[int, str, str]:
            async with s.get(url) as r:
                return r.status, r.headers.get("Cache-Control", ""), await r.text()

        crowd = await asyncio.gather(*(get() for _ in range(50)))
        assert {status for status, _, _ in crowd} == {404}
        assert proxy.object_gets(missing) == 1  # coalesced
        for _ in range(20):  # then answered from the negative cache
            status, cc, text = await get()
            assert status == 404
            assert cc == "max-age=600"
            assert missing in text
        async with s.head(url) as r:
            assert r.status == 404
        assert proxy.object_gets(missing) == 1
        async with s.get(f"{node.metrics_url}/metrics") as r:
            metrics = await r.text()
        assert "edgefill_not_found_cached_responses_total 21.0" in metrics
        # A committed object always wins over a remembered 404 (e.g. pre-positioned since).
        bucket.put(missing, b"now it exists")
        node.apps.node.loader.negative.discard(missing)
        status, _, text = await get()
        assert (status, text) == (200, "now it exists")


async def test_negative_cache_expires_and_can_be_off(
    bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    missing = "vod/later.bin"
    cfg = config_for(proxy.endpoint_url, bucket.name, serving={"notFoundTtlSeconds": 0})
    async with live_node(cfg) as node, aiohttp.ClientSession() as s:
        url = f"{node.client_url}/{missing}"
        for _ in range(3):
            async with s.get(url) as r:
                assert r.status == 404
                assert r.headers["Cache-Control"] == "no-store"
        assert proxy.object_gets(missing) == 3
        # Short TTL: an object uploaded after a 404 is served once the entry expired.
        node.apps.node.config = node.apps.node.config.model_copy(
            update={
                "serving": node.apps.node.config.serving.model_copy(
                    update={"not_found_ttl_seconds": 0.2}
                )
            }
        )
        async with s.get(url) as r:
            assert r.status == 404
        bucket.put(missing, b"uploaded")
        statuses = []
        for _ in range(200):
            async with s.get(url) as r:
                statuses.append(r.status)
                if r.status == 200:
                    assert await r.read() == b"uploaded"
                    break
            await asyncio.sleep(0.02)
        assert statuses[-1] == 200
        assert proxy.object_gets(missing) == 5  # 3 + the 404 that was remembered + the fill


# --- origin minimum throughput --------------------------------------------------------------


async def test_a_trickling_origin_is_abandoned(
    bucket: Bucket,
    proxy: OriginProxy,
    config_for: Callable[..., NodeConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below ``minThroughputBytesPerSecond`` the body is given up, retried with a Range
    resume, and when every attempt trickles the fill fails: the client's connection is
    aborted and nothing is committed. A healthy origin then fills normally."""
    monkeypatch.setattr(origin_module, "THROUGHPUT_WINDOW_SECONDS", 0.3)
    proxy.pace_seconds = 0.1  # 16 KiB chunks every 100 ms: ~160 KiB/s at best
    cfg = config_for(
        proxy.endpoint_url,
        bucket.name,
        origin={"minThroughputBytesPerSecond": 16 * 1024 * KiB, "maxAttempts": 2},
    )
    async with live_node(cfg) as node, aiohttp.ClientSession() as s:
        async with s.get(f"{node.client_url}/{KEY}") as r:
            assert r.status == 200  # headers went out before the origin proved too slow
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        await until(lambda: node.apps.node.loader.in_progress() == 0, "fill finished")
        assert KEY not in node.store
        assert list((node.store.root / "tmp").iterdir()) == []
        assert proxy.object_gets(KEY) == 2
        assert proxy.range_gets[KEY] == 1  # the retry resumed from the bytes held
        async with s.get(f"{node.metrics_url}/metrics") as r:
            metrics = await r.text()
        assert 'edgefill_fills_total{outcome="failed"} 1.0' in metrics
        proxy.reset()
        async with s.get(f"{node.client_url}/{KEY}") as r:
            assert (r.status, await r.read()) == (200, bucket.objects[KEY])


# --- uvloop: zero-copy sendfile on a duplicate descriptor ---------------------------------


def test_uvloop_serves_hits_with_sendfile(bucket: Bucket, tmp_path: Path) -> None:
    """Under uvloop (no ``loop.sendfile``) hits from disk still go out whole and exact,
    ranges included, through ``os.sendfile`` on a duplicate of the connection's fd."""
    uvloop = pytest.importorskip("uvloop")
    from .conftest import node_config

    big = "vod/big.bin"
    data = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: more than a socket buffer holds
    bucket.put(big, data)
    cfg = node_config(tmp_path / "store", bucket.server.endpoint_url, bucket.name)
    cfg = _memory_tier(cfg, False)

    async def scenario() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        async with live_node(cfg) as node, aiohttp.ClientSession() as s:
            await _fill(s, node, big)
            # slow readers make sendfile meet a full socket buffer and wait for writability
            for headers, want in (
                ({}, data),
                ({"Range": "bytes=100000-2999999"}, data[100000:3000000]),
                ({"Range": "bytes=-5"}, data[-5:]),
            ):
                async with s.get(f"{node.client_url}/{big}", headers=headers) as r:
                    assert r.headers["X-EdgeFill-Result"] == "hit"
                    got = bytearray()
                    async for chunk in r.content.iter_chunked(64 * KiB):
                        got += chunk
                        await asyncio.sleep(0)
                    assert bytes(got) == want
            # keep-alive survives: the same connection answers the next request
            bodies = await asyncio.gather(*(_read(s, f"{node.client_url}/{big}") for _ in range(4)))
            assert all(b == data for b in bodies)
            # a client that leaves mid-body does not break the node
            async with s.get(f"{node.client_url}/{big}") as r:
                await r.content.readexactly(1000)
                r.close()
            assert await _read(s, f"{node.client_url}/{big}") == data

    uvloop.run(scenario())


async def _read(s: aiohttp.ClientSession, url: str) -> bytes:
    async with s.get(url) as r:
        return await r.read()


# --- bodies larger than the send buffer: TCP_CORK (nginx's tcp_nopush) --------------------


def _wmem_max() -> int:
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


class _SocketTransport(asyncio.BaseTransport):
    """What ``_corked`` asks of a transport: its socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._sock if name == "socket" else default


@pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux only")
def test_a_body_larger_than_the_send_buffer_is_corked_and_uncorked_after() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with client, conn:
            sndbuf = conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            transport = _SocketTransport(conn)

            def corked() -> int:
                return conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)

            with serve._corked(transport, sndbuf + 1):
                assert corked() == 1
            assert corked() == 0
            with pytest.raises(RuntimeError), serve._corked(transport, sndbuf + 1):
                raise RuntimeError("the send failed")  # uncorked on the way out too
            assert corked() == 0
            with serve._corked(transport, sndbuf):  # fits: one sendfile call, not corked
                assert corked() == 0
            with serve._corked(None, sndbuf + 1):  # the client already went away
                pass


async def test_a_hit_larger_than_the_send_buffer_goes_out_whole_and_keeps_the_connection(
    bucket: Bucket, config_for: Callable[..., NodeConfig]
) -> None:
    """A corked body (more than ``SO_SNDBUF``): whole and exact, ranges too, and the
    same keep-alive connection answers the next requests (the cork was pulled)."""
    big = "vod/bigger-than-sndbuf.bin"
    data = bytes(range(251)) * ((_wmem_max() + 3 * 65536) // 251)
    bucket.put(big, data)
    config = _memory_tier(config_for(bucket.server.endpoint_url, bucket.name), False)
    connector = aiohttp.TCPConnector(limit=1)  # one connection: every request reuses it
    async with live_node(config) as node, aiohttp.ClientSession(connector=connector) as s:
        await _fill(s, node, big)
        for headers, want in (
            ({}, data),
            ({"Range": f"bytes=7-{len(data) - 2}"}, data[7:-1]),
            ({}, data),
        ):
            async with s.get(f"{node.client_url}/{big}", headers=headers) as r:
                assert r.headers["X-EdgeFill-Result"] == "hit"
                assert await r.read() == want
        async with s.head(f"{node.client_url}/{big}") as r:
            assert (r.status, r.headers["Content-Length"]) == (200, str(len(data)))
        async with s.get(f"{node.client_url}/{SMALL}") as r:
            assert (r.status, await r.read()) == (200, bucket.objects[SMALL])
        # a client that leaves mid-body does not break the node
        async with s.get(f"{node.client_url}/{big}") as r:
            await r.content.readexactly(1000)
            r.close()
        async with s.get(f"{node.client_url}/{big}") as r:
            assert await r.read() == data
