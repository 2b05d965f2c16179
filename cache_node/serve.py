"""The client port: GET and HEAD of objects by key.

The view is thin: refuse bad keys and bad tokens first (before any cache
lookup), ask the loader for a committed entry or a fill in progress, let
:func:`cache_node.ranges.plan` decide status and span, then send bytes:

* from memory for small hot objects (the in-memory tier),
* with ``sendfile`` from the committed data file otherwise,
* from the fill's temp file as it grows for a miss (cut-through). If the fill
  fails after the status line went out, the connection is aborted, never
  finished cleanly: a client must not mistake a short body for an object.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from aiohttp import web

from cache_node.appkeys import NODE
from cache_node.loader import Fill, FillFailedError
from cache_node.node import Node
from cache_node.objkeys import KeyRejectedError, normalise
from cache_node.peering import Hop
from cache_node.ranges import Plan, Validators, format_http_date, plan
from cache_node.store import Entry, ObjectInfo, Writer
from cache_node.tokens import TokenRejectedError, verify
from cache_node.upstream import Upstream

log = structlog.get_logger("cache_node.serve")

READ_CHUNK = 256 * 1024
ALLOW = "GET, HEAD"


def object_headers(
    info: ObjectInfo, stored_at: float, now: float, default_cc: str
) -> dict[str, str]:
    """Representation headers every 200/206/304 of this object carries."""
    return {
        "ETag": info.etag,
        "Last-Modified": format_http_date(datetime.fromtimestamp(info.last_modified, UTC)),
        "Accept-Ranges": "bytes",
        "Cache-Control": info.cache_control or default_cc,
        "Age": str(max(0, int(now - stored_at))),
    }


def _entry_headers(entry: Entry, now: float, default_cc: str) -> dict[str, str]:
    """Headers of a committed object: formatted once per entry, only Age changes."""
    cached = entry.derived.get("headers")
    if not isinstance(cached, dict):
        info = entry.meta.info
        cached = object_headers(info, entry.meta.stored_at, now, default_cc)
        cached["X-EdgeFill-Result"] = "hit"
        entry.derived["headers"] = cached
        entry.derived["validators"] = validators(info)
    headers = dict(cached)
    headers["Age"] = str(max(0, int(now - entry.meta.stored_at)))
    return headers


def validators(info: ObjectInfo) -> Validators:
    return Validators(
        size=info.size,
        etag=info.etag,
        last_modified=datetime.fromtimestamp(int(info.last_modified), UTC),
    )


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", headers=headers or None)


def _respond_without_body(p: Plan, base: dict[str, str], info: ObjectInfo) -> web.StreamResponse:
    headers = dict(base)
    headers.update(p.headers)
    if p.status in (412, 416):
        for name in ("Age", "Cache-Control"):
            headers.pop(name, None)
        return web.Response(status=p.status, headers=headers)
    return web.Response(status=p.status, headers=headers)


async def handle_object(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    if request.method not in ("GET", "HEAD"):
        return _error(405, f"method {request.method} not allowed", Allow=ALLOW)
    if not node.ready or node.loader is None:
        return _error(503, "cache node is starting (store recovery)", **{"Retry-After": "5"})
    try:
        key = normalise(request.raw_path)
    except KeyRejectedError as exc:
        node.metrics.rejected.labels("bad_key").inc()
        return _error(exc.status, exc.reason)
    if node.config.tokens.enabled:
        tcfg = node.config.tokens
        token = request.query.get(tcfg.query_param) or request.headers.get(tcfg.header)
        try:
            verify(token, key, node.keyring.keys, time.time(), tcfg.clock_skew_seconds)
        except TokenRejectedError as exc:
            node.metrics.rejected.labels("token").inc()
            return _error(exc.status, exc.reason)
    before = node.peering.chain(key, Hop()) if node.peering is not None else []
    return await serve_key(request, node, key, before)


async def serve_key(
    request: web.Request, node: Node, key: str, before: Sequence[Upstream]
) -> web.StreamResponse:
    """Answer GET/HEAD for an accepted key: a hit, or a fill through ``before`` then origin."""
    assert node.loader is not None
    found = await node.loader.lookup(key, before)
    if isinstance(found, Entry):
        return await _serve_entry(request, node, found)
    return await _serve_fill(request, node, found)


async def _serve_entry(request: web.Request, node: Node, entry: Entry) -> web.StreamResponse:
    info = entry.meta.info
    base = _entry_headers(entry, time.time(), node.config.serving.cache_control)
    obj = entry.derived["validators"]
    assert isinstance(obj, Validators)
    p = plan(request.method, request.headers, obj)
    node.metrics.hit_requests.inc()
    if p.span is None:
        return _respond_without_body(p, base, info)
    headers = {**base, **p.headers, "Content-Type": info.content_type}
    if request.method == "HEAD":
        resp = web.StreamResponse(status=p.status, headers=headers)
        resp.content_length = p.span.length if p.status == 206 else info.size
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    memory = node.memory
    if memory is not None and memory.eligible(entry):
        data = memory.get(entry)
        if data is None:
            data = await asyncio.to_thread(entry.data_path.read_bytes)
            if len(data) == info.size:
                memory.put(entry, data)
        body = data[p.span.start : p.span.start + p.span.length]
        node.metrics.hit_bytes.inc(len(body))
        headers.pop("Content-Length", None)
        return web.Response(status=p.status, body=body, headers=headers)
    try:
        fd = os.open(entry.data_path, os.O_RDONLY)
    except FileNotFoundError:  # evicted between lookup and open: answer as a miss would
        return _error(503, "object was evicted; retry", **{"Retry-After": "1"})
    try:
        headers.pop("Content-Length", None)
        resp = web.StreamResponse(status=p.status, headers=headers)
        resp.content_length = p.span.length
        try:
            await resp.prepare(request)
            await _sendfile(request, resp, fd, p.span.start, p.span.length)
            await resp.write_eof()
        except ConnectionResetError:  # the client went away mid-body: nothing to answer
            log.debug("client_gone", key=entry.key)
            return resp
        node.metrics.hit_bytes.inc(p.span.length)
        return resp
    finally:
        os.close(fd)


async def _sendfile(
    request: web.Request, resp: web.StreamResponse, fd: int, offset: int, count: int
) -> None:
    """Zero-copy when the loop and transport allow it; chunked reads otherwise."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    with os.fdopen(os.dup(fd), "rb", buffering=0) as fobj:
        try:
            await loop.sendfile(transport, fobj, offset, count, fallback=False)
            return
        except (NotImplementedError, AttributeError, RuntimeError):
            pass
        except asyncio.exceptions.SendfileNotAvailableError:
            pass
    sent = 0
    while sent < count:
        chunk = os.pread(fd, min(READ_CHUNK, count - sent), offset + sent)
        if not chunk:
            raise OSError("data file shorter than its metadata")
        await resp.write(chunk)
        sent += len(chunk)


def _open_fill_file(fill: Fill, writer: Writer) -> int:
    for path in (writer.path, writer.final_path):
        if path is None:
            continue
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
    raise FillFailedError(f"{fill.key}: fill file vanished")


async def _serve_fill(request: web.Request, node: Node, fill: Fill) -> web.StreamResponse:
    try:
        info, writer, epoch = await fill.wait_info()
    except FillFailedError as exc:
        if exc.not_found:
            return _error(404, f"no object {fill.key!r} at the origin")
        node.metrics.requests.labels("error").inc()
        return _error(502, f"origin fetch failed: {exc}")
    result = fill.source or "origin"
    base = object_headers(info, time.time(), time.time(), node.config.serving.cache_control)
    base["X-EdgeFill-Result"] = "miss"
    p = plan(request.method, request.headers, validators(info))
    node.metrics.requests.labels(result).inc()
    if p.span is None:
        return _respond_without_body(p, base, info)
    headers = {**base, **p.headers, "Content-Type": info.content_type}
    headers.pop("Content-Length", None)
    resp = web.StreamResponse(status=p.status, headers=headers)
    resp.content_length = p.span.length if request.method == "GET" else info.size
    if request.method == "HEAD":
        if p.status == 206:
            resp.content_length = p.span.length
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    try:
        fd = _open_fill_file(fill, writer)
    except FillFailedError as exc:
        node.metrics.requests.labels("error").inc()
        return _error(502, str(exc))
    try:
        await resp.prepare(request)
        pos, end = p.span.start, p.span.start + p.span.length
        try:
            while pos < end:
                available = await fill.wait_bytes(pos, epoch)
                if available <= pos:
                    raise FillFailedError(f"{fill.key}: fill ended at {available} bytes")
                want = min(available, end) - pos
                while want > 0:
                    chunk = os.pread(fd, min(READ_CHUNK, want), pos)
                    if not chunk:
                        raise FillFailedError(f"{fill.key}: fill file shorter than written")
                    await resp.write(chunk)
                    pos += len(chunk)
                    want -= len(chunk)
        except ConnectionResetError:  # the client went away; the fill carries on for others
            log.debug("client_gone", key=fill.key, sent=pos)
            return resp
        except FillFailedError as exc:
            node.metrics.requests.labels("error").inc()
            log.warning("client_aborted_fill_failed", key=fill.key, sent=pos, error=str(exc))
            # Abort (RST), never finish: a clean end would look like a complete short body.
            if request.transport is not None:
                request.transport.abort()
            return resp
        node.metrics.served_bytes.labels(result).inc(p.span.length)
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)
