"""A table of Range and conditional requests against a live node (RFC 9110 §13, §14).

Every case checks status, the headers that matter for it and the exact bytes,
once on a hit (committed object, sendfile or memory tier) and once on a miss
(cut-through from a fill in progress).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from cache_node.config import NodeConfig
from cache_node.ranges import format_http_date
from edgefill_devenv.origin_proxy import OriginProxy

from .conftest import Bucket, LiveNode, live_node, until

pytestmark = pytest.mark.integration

KEY = "vod/medium.bin"
EMPTY = "vod/empty.bin"


@dataclass
class Case:
    name: str
    headers: dict[str, str]
    status: int
    span: tuple[int, int] | None = None  # inclusive byte range of the body; None: no body
    method: str = "GET"
    key: str = KEY
    expect_headers: dict[str, str] = field(default_factory=dict)


def cases(n: int, etag: str, lm: datetime) -> list[Case]:
    lm_s = format_http_date(lm)
    before = format_http_date(lm - timedelta(days=1))
    after = format_http_date(lm + timedelta(days=1))
    full = (0, n - 1)
    many = ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17))
    return [
        Case("no range", {}, 200, full),
        Case("first byte", {"Range": "bytes=0-0"}, 206, (0, 0)),
        Case("first 100", {"Range": "bytes=0-99"}, 206, (0, 99)),
        Case("middle", {"Range": "bytes=100-199"}, 206, (100, 199)),
        Case("suffix 100", {"Range": "bytes=-100"}, 206, (n - 100, n - 1)),
        Case("suffix 1", {"Range": "bytes=-1"}, 206, (n - 1, n - 1)),
        Case("suffix = length", {"Range": f"bytes=-{n}"}, 206, full),
        Case("suffix > length", {"Range": f"bytes=-{n + 100}"}, 206, full),
        Case("last byte open", {"Range": f"bytes={n - 1}-"}, 206, (n - 1, n - 1)),
        Case("open-ended", {"Range": "bytes=1000-"}, 206, (1000, n - 1)),
        Case("zero open-ended", {"Range": "bytes=0-"}, 206, full),
        Case("end clamped", {"Range": f"bytes=0-{n + 1000}"}, 206, full),
        Case("piece boundary", {"Range": "bytes=16383-16384"}, 206, (16383, 16384)),
        Case(
            "start at length",
            {"Range": f"bytes={n}-"},
            416,
            expect_headers={"Content-Range": f"bytes */{n}"},
        ),
        Case(
            "beyond length",
            {"Range": f"bytes={n + 5}-{n + 10}"},
            416,
            expect_headers={"Content-Range": f"bytes */{n}"},
        ),
        Case("suffix zero", {"Range": "bytes=-0"}, 416),
        Case("reversed is invalid", {"Range": "bytes=5-2"}, 200, full),
        Case("garbage", {"Range": "bytes=abc"}, 200, full),
        Case("other unit", {"Range": "items=0-5"}, 200, full),
        Case("unit case-insensitive", {"Range": "BYTES=0-4"}, 206, (0, 4)),
        Case("negative start", {"Range": "bytes=--5"}, 200, full),
        Case("plus sign", {"Range": "bytes=+1-5"}, 200, full),
        Case("empty set", {"Range": "bytes="}, 200, full),
        Case("trailing comma", {"Range": "bytes=0-1,"}, 206, (0, 1)),
        Case("multi disjoint → 200", {"Range": "bytes=0-4,10-14"}, 200, full),
        Case("multi adjacent coalesced", {"Range": "bytes=0-4,5-9"}, 206, (0, 9)),
        Case("multi overlapping coalesced", {"Range": "bytes=0-10,5-20"}, 206, (0, 20)),
        Case("multi one satisfiable", {"Range": f"bytes=0-4,{n + 10}-{n + 20}"}, 206, (0, 4)),
        Case("multi none satisfiable", {"Range": f"bytes={n}-,{n + 1}-"}, 416),
        Case("too many ranges", {"Range": f"bytes={many}"}, 200, full),
        Case("INM match", {"If-None-Match": etag}, 304, expect_headers={"ETag": etag}),
        Case("INM weak match", {"If-None-Match": "W/" + etag}, 304),
        Case("INM other", {"If-None-Match": '"other"'}, 200, full),
        Case("INM star", {"If-None-Match": "*"}, 304),
        Case("INM list", {"If-None-Match": f'"x", {etag}'}, 304),
        Case("IMS equal", {"If-Modified-Since": lm_s}, 304),
        Case("IMS later", {"If-Modified-Since": after}, 304),
        Case("IMS earlier", {"If-Modified-Since": before}, 200, full),
        Case("IMS garbage ignored", {"If-Modified-Since": "yesterday"}, 200, full),
        Case(
            "INM wins over IMS",
            {"If-None-Match": '"other"', "If-Modified-Since": lm_s},
            200,
            full,
        ),
        Case("IM match", {"If-Match": etag}, 200, full),
        Case("IM other", {"If-Match": '"other"'}, 412),
        Case("IM star", {"If-Match": "*"}, 200, full),
        Case("IM weak never matches", {"If-Match": "W/" + etag}, 412),
        Case("IUS earlier", {"If-Unmodified-Since": before}, 412),
        Case("IUS equal", {"If-Unmodified-Since": lm_s}, 200, full),
        Case("If-Range etag", {"If-Range": etag, "Range": "bytes=0-9"}, 206, (0, 9)),
        Case("If-Range other", {"If-Range": '"other"', "Range": "bytes=0-9"}, 200, full),
        Case("If-Range weak", {"If-Range": "W/" + etag, "Range": "bytes=0-9"}, 200, full),
        Case("If-Range date", {"If-Range": lm_s, "Range": "bytes=0-9"}, 206, (0, 9)),
        Case("If-Range old date", {"If-Range": before, "Range": "bytes=0-9"}, 200, full),
        Case("range + INM match", {"If-None-Match": etag, "Range": "bytes=0-9"}, 304),
        Case("range + IM other", {"If-Match": '"other"', "Range": "bytes=0-9"}, 412),
        Case("HEAD", {}, 200, None, method="HEAD", expect_headers={"Content-Length": str(n)}),
        Case(
            "HEAD ignores Range",
            {"Range": "bytes=0-9"},
            200,
            None,
            method="HEAD",
            expect_headers={"Content-Length": str(n)},
        ),
        Case("HEAD INM", {"If-None-Match": etag}, 304, method="HEAD"),
        Case(
            "empty object range",
            {"Range": "bytes=0-4"},
            416,
            key=EMPTY,
            expect_headers={"Content-Range": "bytes */0"},
        ),
        Case("empty object", {}, 200, (0, -1), key=EMPTY),
    ]


async def _check(
    session: aiohttp.ClientSession, node: LiveNode, bucket: Bucket, case: Case, path: str
) -> str | None:
    url = f"{node.client_url}/{case.key}"
    async with session.request(case.method, url, headers=case.headers) as resp:
        body = await resp.read()
        problems = []
        if resp.status != case.status:
            problems.append(f"status {resp.status} != {case.status}")
        for name, value in case.expect_headers.items():
            if resp.headers.get(name) != value:
                problems.append(f"{name}: {resp.headers.get(name)!r} != {value!r}")
        data = bucket.objects[case.key]
        if case.span is None:
            if resp.status in (412, 416) and case.method == "GET":
                # an error: a short text/plain reason, never object bytes
                if not resp.headers.get("Content-Type", "").startswith("text/plain"):
                    problems.append(f"{resp.status} without a text/plain reason")
            elif body:
                problems.append(f"unexpected body of {len(body)} bytes")
        else:
            start, end = case.span
            if body != data[start : end + 1]:
                problems.append(f"body of {len(body)} bytes is not bytes {start}-{end}")
            if resp.headers.get("Content-Length") != str(end - start + 1):
                problems.append(f"Content-Length {resp.headers.get('Content-Length')}")
        if resp.status == 206:
            start, end = case.span or (0, 0)
            want = f"bytes {start}-{end}/{len(data)}"
            if resp.headers.get("Content-Range") != want:
                problems.append(f"Content-Range {resp.headers.get('Content-Range')} != {want}")
        if resp.status in (200, 206, 304):
            for name in ("ETag", "Last-Modified", "Cache-Control"):
                if name not in resp.headers:
                    problems.append(f"missing {name}")
        if resp.status in (200, 206) and resp.headers.get("X-EdgeFill-Result") != path:
            problems.append(f"served as {resp.headers.get('X-EdgeFill-Result')}, not {path}")
        if resp.status in (200, 206):
            for name in ("Accept-Ranges", "Age"):
                if name not in resp.headers:
                    problems.append(f"missing {name}")
    return f"{case.name}: {'; '.join(problems)}" if problems else None


@pytest.mark.parametrize("path", ["hit", "miss"])
async def test_range_and_conditional_table(
    path: str, bucket: Bucket, proxy: OriginProxy, config_for: Callable[..., NodeConfig]
) -> None:
    async with live_node(config_for(proxy.endpoint_url, bucket.name)) as node:
        async with aiohttp.ClientSession() as s:
            for key in (KEY, EMPTY):  # learn the validators through the node itself
                async with s.get(f"{node.client_url}/{key}") as resp:
                    await resp.read()
                await until(lambda k=key: k in node.store, "committed")  # type: ignore[misc]
            entry = node.store.peek(KEY)
            lm = datetime.fromtimestamp(int(entry.meta.info.last_modified), UTC)
            table = cases(len(bucket.objects[KEY]), entry.meta.info.etag, lm)
            assert len(table) >= 40
            loader = node.apps.node.loader
            assert loader is not None
            failures = []
            for case in table:
                if path == "miss":
                    await until(lambda: loader.in_progress() == 0, "fills done")
                    node.store.remove(case.key)
                problem = await _check(s, node, bucket, case, path)
                if problem:
                    failures.append(problem)
        assert not failures, "\n".join(failures)
