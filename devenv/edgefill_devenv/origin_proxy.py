"""A counting, fault-injecting reverse proxy in front of the S3 test server.

Tests need to know how many GETs reached the origin per key (coalescing:
200 concurrent cold GETs must make exactly one) and to make the origin fail
in specific ways (a body cut off mid-way). moto does not count or misbehave
on request, so this small aiohttp proxy on loopback sits between the cache
node and moto: the node's ``origin.endpointUrl`` points here.

It forwards every request unchanged (method, path, query, headers including
the SigV4 ``Authorization`` and ``Host``) and streams the answer back.
Faults are set per key with :meth:`OriginProxy.cut_body` (close the
connection after N body bytes, for the next M GETs),
:meth:`OriginProxy.corrupt_body` (flip one body byte in transit, length and
headers unchanged) and :meth:`OriginProxy.stall` (pause before the body).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

CHUNK = 16 * 1024
STATS_PATH = "/_origin_proxy/stats"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass
class _Cut:
    after_bytes: int
    times: int
    then: Callable[[], Awaitable[None]] | None = None


@dataclass
class OriginProxy:
    """Forward to ``upstream`` (the S3 endpoint URL); listen on ``host`` (loopback)."""

    upstream: str
    bucket: str
    host: str = "127.0.0.1"
    port: int = 0
    gets: collections.Counter[str] = field(default_factory=collections.Counter)
    range_gets: collections.Counter[str] = field(default_factory=collections.Counter)
    body_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    _cuts: dict[str, _Cut] = field(default_factory=dict)
    _stalls: dict[str, float] = field(default_factory=dict)
    _corruptions: dict[str, list[int]] = field(default_factory=dict)  # key: [offset, times]
    pace_seconds: float = 0.0  # pause after every body chunk (slow origin)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def object_gets(self, key: str) -> int:
        return self.gets[key]

    def total_gets(self) -> int:
        return sum(self.gets.values())

    def total_bytes(self) -> int:
        """Object body bytes the origin sent through this proxy."""
        return sum(self.body_bytes.values())

    def stats(self) -> dict[str, int]:
        return {"gets": self.total_gets(), "bytes": self.total_bytes(), "keys": len(self.gets)}

    def cut_body(
        self,
        key: str,
        after_bytes: int,
        times: int = 1,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Close the connection after ``after_bytes`` body bytes for the next ``times`` GETs.

        ``then`` runs after each cut, before the client can retry (e.g. replace the
        object at the origin so that the resume meets a changed ETag).
        """
        self._cuts[key] = _Cut(after_bytes, times, then)

    def corrupt_body(self, key: str, at_byte: int, times: int = 1) -> None:
        """Flip the bits of body byte ``at_byte`` (of the object) in the next ``times``
        GETs of ``key`` that carry it: a body damaged on the way, nothing else changed."""
        self._corruptions[key] = [at_byte, times]

    def stall(self, key: str, seconds: float) -> None:
        self._stalls[key] = seconds

    def reset(self) -> None:
        self.gets.clear()
        self.range_gets.clear()
        self.body_bytes.clear()
        self._cuts.clear()
        self._stalls.clear()
        self._corruptions.clear()
        self.pace_seconds = 0.0

    def _key_of(self, path: str) -> str | None:
        prefix = f"/{self.bucket}/"
        if not path.startswith(prefix):
            return None
        return urllib.parse.unquote(path[len(prefix) :])

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        key = self._key_of(request.path) if request.method == "GET" else None
        if key is not None and not request.query:
            self.gets[key] += 1
            if "Range" in request.headers:
                self.range_gets[key] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        url = self.upstream + request.raw_path
        async with self._session.request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            resp = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    resp.headers.add(name, value)
            if upstream.content_length is not None:
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            cut = self._cuts.get(key) if key is not None and upstream.status < 300 else None
            stall = self._stalls.get(key) if key is not None else None
            if stall:
                await asyncio.sleep(stall)
            try:
                finished = await self._relay(request, resp, upstream, key, cut)
            except ConnectionResetError:  # the client (a killed node) went away
                return resp
            if finished:
                await resp.write_eof()
            return resp

    async def _relay(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        key: str | None,
        cut: _Cut | None,
    ) -> bool:
        """Stream the body; False when a cut was injected (connection aborted)."""
        sent = 0
        first = _first_byte(upstream.headers.get("Content-Range"))
        corrupt = self._corruptions.get(key) if key is not None and upstream.status < 300 else None
        async for chunk in upstream.content.iter_chunked(CHUNK):
            if corrupt is not None and sent <= corrupt[0] - first < sent + len(chunk):
                at = corrupt[0] - first - sent
                chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1 :]
                corrupt[1] -= 1
                if corrupt[1] <= 0 and key is not None:
                    self._corruptions.pop(key, None)
                corrupt = None
            if cut is not None and sent + len(chunk) >= cut.after_bytes:
                await resp.write(chunk[: cut.after_bytes - sent])
                cut.times -= 1
                if cut.times <= 0 and key is not None:
                    self._cuts.pop(key, None)
                if cut.then is not None:
                    await cut.then()
                if request.transport is not None:
                    request.transport.abort()
                return False
            await resp.write(chunk)
            sent += len(chunk)
            if key is not None:
                self.body_bytes[key] += len(chunk)
            if self.pace_seconds:
                await asyncio.sleep(self.pace_seconds)
        return True

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def start(self) -> OriginProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        # Bucket names cannot start with "_", so this path never shadows S3.
        app.router.add_get(STATS_PATH, self._stats)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None

    async def __aenter__(self) -> OriginProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _first_byte(content_range: str | None) -> int:
    """The object offset a body starts at: 0, or the first byte of ``bytes a-b/n``."""
    if not content_range or not content_range.startswith("bytes "):
        return 0
    first, _, _ = content_range[len("bytes ") :].partition("-")
    return int(first) if first.isdigit() else 0


async def _serve(upstream: str, bucket: str, host: str, port: int) -> None:
    async with OriginProxy(upstream=upstream, bucket=bucket, host=host, port=port) as proxy:
        print(
            f"origin proxy {proxy.endpoint_url} -> {upstream} (stats at {STATS_PATH})", flush=True
        )
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """Run the proxy as a process (the demo measures origin traffic with it)."""
    import argparse

    parser = argparse.ArgumentParser(description="Counting reverse proxy in front of S3.")
    parser.add_argument("--upstream", required=True, help="S3 endpoint URL to forward to")
    parser.add_argument("--bucket", required=True, help="bucket whose object GETs are counted")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.upstream, args.bucket, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
