"""The client port: GET and HEAD of objects by key.

The view is thin: refuse bad keys and bad tokens first (before any cache
lookup), ask the loader for a committed entry or a fill in progress, let
:func:`cache_node.ranges.plan` decide status and span, then send bytes:

* from memory for small hot objects (the in-memory tier),
* with ``sendfile`` from the committed data file otherwise,
* from the fill's temp file as it grows for a miss (cut-through). If the fill
  fails after the status line went out, the connection is aborted, never
  finished cleanly: a client must not mistake a short body for an object.

HTTP semantics decided here (RFC 9110): GET and HEAD are served; OPTIONS
answers 204 with ``Allow``; the other methods RFC 9110 defines, and PATCH, are
405 with ``Allow``; any other method is 501 (§9.1, §15.6.2: the server does not
recognize it), also one aiohttp's parser refuses before routing (the fast
lane's connection handler turns that 400 into 501 when the request line is
well formed). A request target in
absolute-form (RFC 9112 §3.2.2) names the same key as its origin-form; an
HTTP/1.1 request without exactly one valid ``Host`` is a 400 (§3.2), on every
route of the client port (:func:`http_rules`), which also answers
``OPTIONS *`` (204 with ``Allow``). Error
bodies are ``text/plain`` with a reason a person can act on. A definitive 404
from the origin is remembered for ``serving.notFoundTtlSeconds`` (see
:class:`cache_node.loader.NegativeCache`) and says so in ``Cache-Control``.

Plain hits of objects held in memory are answered before aiohttp's request
handling by the fast lane (:mod:`cache_node.fastlane` calls :func:`fast_answer`),
with the same bytes as :func:`handle_object` would send; everything else comes
here.

The hit path is the hot path: everything that depends only on the stored
object (headers, validators, the plain 200 plan) is formatted once per entry
and kept in ``Entry.derived``; a request without Range or conditional headers
skips :func:`cache_node.ranges.plan`, and the peer chain is only ranked on a
miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime

import structlog
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDict

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
ALLOW = "GET, HEAD, OPTIONS"
TOKEN_CHALLENGE = 'EdgeFill-Token realm="edgefill"'  # noqa: S105 - a scheme name, no secret
# Request headers that make an answer differ from the plain 200 of the whole object.
_PLAN_HEADERS = (
    "Range",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
)


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


class _EntryForm:
    """What a committed entry's answers share, formatted once (kept in ``Entry.derived``).

    ``full_headers`` is the header block of the plain 200 (all but ``Age``) as a
    ``CIMultiDict``, which aiohttp copies in C instead of rebuilding it per request.
    """

    __slots__ = (
        "body_headers",
        "cache_control",
        "full_headers",
        "headers",
        "validators",
        "wire_head",
    )

    def __init__(self, entry: Entry, default_cc: str) -> None:
        info = entry.meta.info
        self.cache_control = default_cc
        headers = object_headers(info, entry.meta.stored_at, entry.meta.stored_at, default_cc)
        del headers["Age"]
        headers["X-EdgeFill-Result"] = "hit"
        self.headers = headers  # 304/412/416: no representation metadata (§15.4.5)
        self.body_headers = {**headers, "Content-Type": info.content_type}
        self.full_headers: CIMultiDict[str] = CIMultiDict(self.body_headers)
        self.full_headers["Content-Length"] = str(info.size)
        self.validators = validators(info)
        self.wire_head = _wire_head(self.full_headers)


def _wire_head(headers: CIMultiDict[str]) -> bytes | None:
    """The plain 200's status line and headers as sent, but ``Date``, ``Age`` and the
    blank line (added per request), for the fast lane; ``None`` when a value has a
    line break (left to aiohttp, which refuses to send it)."""
    fields = [*headers.items(), ("Server", SERVER_SOFTWARE)]
    if any("\r" in value or "\n" in value for _, value in fields):
        return None
    return ("HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)).encode()


def _entry_form(entry: Entry, default_cc: str) -> _EntryForm:
    form = entry.derived.get("form")
    if not isinstance(form, _EntryForm) or form.cache_control != default_cc:
        form = _EntryForm(entry, default_cc)
        entry.derived["form"] = form
    return form


def validators(info: ObjectInfo) -> Validators:
    return Validators(
        size=info.size,
        etag=info.etag,
        last_modified=datetime.fromtimestamp(int(info.last_modified), UTC),
    )


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", headers=headers or None)


# RFC 9112 §3.2 / RFC 3986 §3.2.2-3.2.3: uri-host [ ":" port ]; empty is allowed.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?")


def host_fields_valid(values: Sequence[str]) -> bool:
    """Exactly one ``Host`` field with a valid value (RFC 9112 §3.2)."""
    return len(values) == 1 and _HOST.fullmatch(values[0]) is not None


@web.middleware
async def http_rules(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """RFC 9112 rules for every route of the client port, before any of them runs.

    * §3.2: an HTTP/1.1 request without exactly one valid ``Host`` is a 400 (MUST);
    * §3.2.4: the asterisk-form target (``OPTIONS *``) asks about the server as a
      whole: 204 with ``Allow`` (aiohttp's parser refuses ``*`` with other methods).
    """
    if request.version >= HttpVersion11 and not host_fields_valid(
        request.headers.getall("Host", ())
    ):
        return _error(400, "HTTP/1.1 needs exactly one valid Host header field (RFC 9112 3.2)")
    if request.raw_path == "*" and request.method == "OPTIONS":
        return web.Response(status=204, headers={"Allow": ALLOW})
    return await handler(request)


# Methods this server recognizes (RFC 9110 §9, and PATCH, RFC 5789): the ones it does
# not serve are 405; a method outside this set is 501. Methods are case-sensitive.
RECOGNIZED_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def not_implemented_reason(method: str) -> str:
    """The 501 reason for a method this server does not recognize."""
    return f"method {method} is not implemented by this server; it serves GET and HEAD"


def method_answer(method: str) -> web.Response | None:
    """``None`` for GET and HEAD; the answer for every other method (RFC 9110 §9)."""
    if method == "GET" or method == "HEAD":
        return None
    if method == "OPTIONS":
        return web.Response(status=204, headers={"Allow": ALLOW})
    if method not in RECOGNIZED_METHODS:
        return _error(501, not_implemented_reason(method))
    return _error(405, f"method {method} is not allowed here; use GET or HEAD", Allow=ALLOW)


def request_path(request: web.Request) -> str:
    """The raw path of the request target; absolute-form targets are reduced to it."""
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    return request.rel_url.raw_path


_STATUS_REASONS = {
    412: "precondition failed (If-Match / If-Unmodified-Since / If-None-Match)",
    416: "range not satisfiable",
}


def _respond_without_body(p: Plan, base: dict[str, str]) -> web.StreamResponse:
    """304, 412 or 416: validators and the plan's headers; a short reason for the errors."""
    headers = {**base, **p.headers}
    if p.status == 304:
        return web.Response(status=304, headers=headers)
    for name in ("Age", "Cache-Control", "Accept-Ranges"):
        headers.pop(name, None)
    headers.pop("Content-Length", None)
    return web.Response(status=p.status, text=_STATUS_REASONS[p.status] + "\n", headers=headers)


async def handle_object(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    answer = method_answer(request.method)
    if answer is not None:
        return answer
    if not node.ready or node.loader is None:
        return _error(503, "cache node is starting (store recovery)", **{"Retry-After": "5"})
    try:
        key = normalise(request_path(request))
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
            if exc.status == 401:  # RFC 9110 §11.6.1: a 401 names how to authenticate
                return _error(401, exc.reason, **{"WWW-Authenticate": TOKEN_CHALLENGE})
            return _error(exc.status, exc.reason)
    peering = node.peering
    if peering is None:
        return await serve_key(request, node, key, ())
    return await serve_key(request, node, key, lambda: peering.chain(key, Hop()))


class _DateLine:
    """``Date: ...`` and CRLF for the current second (RFC 9110 §6.6.1), formatted once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.line = b""

    def __call__(self, now: float) -> bytes:
        second = int(now)
        if second != self.second:
            date = format_http_date(datetime.fromtimestamp(second, UTC))
            self.line = f"Date: {date}\r\n".encode()
            self.second = second
        return self.line


_date = _DateLine()


def fast_answer(
    node: Node, routed_elsewhere: Callable[[str], bool], message: RawRequestMessage
) -> bytes | None:
    """The complete response to a plain hit held in memory, or ``None`` for the full path.

    The client port's fast lane (:mod:`cache_node.fastlane`) calls this for each
    parsed request on an idle connection. It answers only what
    :func:`handle_object` would answer with a plain 200 (or its HEAD) from the
    in-memory tier, with the same bytes of headers and body, the same token
    check and the same counters: a GET or HEAD in HTTP/1.1 with one valid
    ``Host``, an origin-form target that no other route of the client app may
    claim (``routed_elsewhere``, e.g. the tracker's ``/announce``), no Range or
    conditional header, a valid token (when tokens are on), a verified entry
    whose bytes are in memory. Everything else (including every error) is
    ``None``, so the full path answers it, with its reasons.
    """
    method = message.method
    if (method != "GET" and method != "HEAD") or message.version != HttpVersion11:
        return None
    if message.should_close or message.upgrade or message.chunked:
        return None
    memory, store = node.memory, node.store
    if memory is None or store is None or not node.ready:
        return None
    raw = message.path
    if not raw.startswith("/"):
        return None
    headers = message.headers
    if not host_fields_valid(headers.getall("Host", ())):
        return None
    for name in _PLAN_HEADERS:
        if name in headers:
            return None
    try:
        key = normalise(raw)
    except KeyRejectedError:
        return None
    if routed_elsewhere(raw.partition("?")[0]) or routed_elsewhere("/" + key):
        return None
    cfg = node.config
    if cfg.tokens.enabled:
        tcfg = cfg.tokens
        token = message.url.query.get(tcfg.query_param) or headers.get(tcfg.header)
        try:
            verify(token, key, node.keyring.keys, time.time(), tcfg.clock_skew_seconds)
        except TokenRejectedError:
            return None
    entry = store.peek(key)
    if entry is None or not entry.verified or not memory.eligible(entry):
        return None
    data = memory.get(entry)
    if data is None:
        return None
    head = _entry_form(entry, cfg.serving.cache_control).wire_head
    if head is None:
        return None
    store.get(key)  # the access, for eviction (the full path's lookup does the same)
    now = time.time()
    age = b"Age: %d\r\n\r\n" % max(0, int(now - entry.meta.stored_at))
    traffic = node.metrics.traffic
    traffic.requests["hit"] += 1
    traffic.fast_lane += 1
    if method == "HEAD":
        return b"".join((head, _date(now), age))
    traffic.bytes["hit"] += len(data)
    return b"".join((head, _date(now), age, data))


async def serve_key(
    request: web.Request,
    node: Node,
    key: str,
    before: Sequence[Upstream] | Callable[[], Sequence[Upstream]],
) -> web.StreamResponse:
    """Answer GET/HEAD for an accepted key: a hit, or a fill through ``before`` then origin.

    ``before`` may be a callable: it is only called when a fill starts.
    """
    assert node.loader is not None
    found = await node.loader.lookup(key, before, respect_negative=True)
    if isinstance(found, Entry):
        return await _serve_entry(request, node, found)
    return await _serve_fill(request, node, found)


async def _serve_entry(request: web.Request, node: Node, entry: Entry) -> web.StreamResponse:
    form = _entry_form(entry, node.config.serving.cache_control)
    traffic = node.metrics.traffic
    traffic.requests["hit"] += 1
    age = str(max(0, int(time.time() - entry.meta.stored_at)))
    req_headers = request.headers
    for name in _PLAN_HEADERS:
        if name in req_headers:
            break
    else:  # the common case: the whole object, headers formatted long ago
        return await _send_entry(request, node, entry, 200, 0, entry.size, form.full_headers, age)
    p = plan(request.method, req_headers, form.validators)
    if p.span is None:
        return _respond_without_body(p, {**form.headers, "Age": age})
    headers: CIMultiDict[str] = CIMultiDict(form.body_headers)
    headers.update(p.headers)
    span = p.span
    return await _send_entry(request, node, entry, p.status, span.start, span.length, headers, age)


async def _send_entry(
    request: web.Request,
    node: Node,
    entry: Entry,
    status: int,
    start: int,
    length: int,
    headers: CIMultiDict[str],
    age: str,
) -> web.StreamResponse:
    """Send ``length`` bytes from ``start`` of a committed object (HEAD: the headers only)."""
    if request.method == "HEAD":
        resp = web.Response(status=status, headers=headers)
        resp.headers["Age"] = age
        return resp
    memory = node.memory
    if memory is not None and memory.eligible(entry):
        data = memory.get(entry)
        if data is None:
            data = await asyncio.to_thread(entry.data_path.read_bytes)
            if len(data) == entry.size:
                memory.put(entry, data)
        if length != len(data):
            data = data[start : start + length]
        node.metrics.traffic.bytes["hit"] += len(data)
        resp = web.Response(status=status, body=data, headers=headers)
        resp.headers["Age"] = age
        return resp
    try:
        fd = os.open(entry.data_path, os.O_RDONLY)
    except FileNotFoundError:  # evicted between lookup and open: answer as a miss would
        return _error(503, "object was evicted; retry", **{"Retry-After": "1"})
    try:
        stream = web.StreamResponse(status=status, headers=headers)  # a copy, not the template
        stream.headers["Age"] = age
        stream.content_length = length
        try:
            with _corked(request.transport, length):
                await stream.prepare(request)
                await _sendfile(request, stream, fd, start, length)
            await stream.write_eof()
        except ConnectionResetError:  # the client went away mid-body: nothing to answer
            log.debug("client_gone", key=entry.key)
            return stream
        node.metrics.traffic.bytes["hit"] += length
        return stream
    finally:
        os.close(fd)


@contextlib.contextmanager
def _corked(transport: asyncio.BaseTransport | None, length: int) -> Iterator[None]:
    """``TCP_CORK`` around a body larger than the connection's send buffer (Linux).

    This is nginx's ``tcp_nopush``: while corked the kernel sends only full
    segments, the header block leaves in the body's first segment, and the cork
    is pulled when the body is handed over, which sends the short tail. It is
    applied only when the body cannot go out in one ``sendfile`` call (more than
    ``SO_SNDBUF``, autotuned up to ``net.ipv4.tcp_wmem``'s maximum): then
    the body leaves over several writability wake-ups, and (our reading of the
    gain) uncorked every wake-up would push a short segment of its own. Measured
    with ``bench/cache_node/hit_throughput.py`` on loopback: 8 MiB hits 0.87-0.94x
    nginx uncorked, 1.06-1.08x corked; a body that fits the buffer is handed over
    in one call, and corking it measured slower (1 MiB 0.5x), so it is left alone.
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    cork = getattr(socket, "TCP_CORK", None)
    if sock is None or cork is None:
        yield
        return
    corked = False
    try:
        if length > sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF):
            sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
            corked = True
    except OSError:  # the connection is gone; the send below reports it
        pass
    try:
        yield
    finally:
        if corked:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, cork, 0)


async def _sendfile(
    request: web.Request, resp: web.StreamResponse, fd: int, offset: int, count: int
) -> None:
    """Zero-copy when the loop and transport allow it; chunked reads otherwise.

    asyncio's ``loop.sendfile`` is zero-copy. uvloop has none, so there the bytes
    go out with ``os.sendfile`` on a duplicate of the connection's descriptor,
    waiting for writability with ``add_writer`` on that duplicate (uvloop refuses
    a watcher on the transport's own descriptor). That is only safe while the
    transport has nothing buffered (the status line and headers went out), which
    is the case on a fresh response; otherwise the copy path keeps the order.
    """
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        with os.fdopen(os.dup(fd), "rb", buffering=0) as fobj:
            try:
                await loop.sendfile(transport, fobj, offset, count, fallback=False)
                return
            except (NotImplementedError, RuntimeError, asyncio.SendfileNotAvailableError):
                pass
    else:
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_write_buffer_size() == 0:
            await sendfile_fd(loop, sock.fileno(), fd, offset, count)
            return
    sent = 0
    while sent < count:
        chunk = os.pread(fd, min(READ_CHUNK, count - sent), offset + sent)
        if not chunk:
            raise OSError("data file shorter than its metadata")
        await resp.write(chunk)
        sent += len(chunk)


async def sendfile_fd(
    loop: asyncio.AbstractEventLoop, sock_fd: int, fd: int, offset: int, count: int
) -> None:
    """``count`` bytes of ``fd`` from ``offset`` to the non-blocking socket ``sock_fd``.

    The writability watcher stays registered for the whole body (registering it per
    wait would cost an event-loop handle and two ``epoll_ctl`` calls each time the
    socket buffer fills); its callback only wakes a waiter that is there.
    """
    out = os.dup(sock_fd)
    waiter: list[asyncio.Future[None]] = []

    def wake() -> None:
        if waiter and not waiter[0].done():
            waiter[0].set_result(None)

    watching = False
    try:
        while count > 0:
            try:
                sent = os.sendfile(out, fd, offset, count)
            except BlockingIOError:
                if not watching:
                    loop.add_writer(out, wake)
                    watching = True
                waiter[:] = [loop.create_future()]
                await waiter[0]
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ConnectionResetError(f"client went away: {exc}") from exc
            if sent == 0:
                raise OSError("data file shorter than its metadata")
            offset += sent
            count -= sent
    finally:
        if watching:
            loop.remove_writer(out)
        os.close(out)


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
            ttl = node.config.serving.not_found_ttl_seconds
            cc = f"max-age={int(ttl)}" if ttl >= 1 else "no-store"
            return _error(404, f"no object {fill.key!r} at the origin", **{"Cache-Control": cc})
        node.metrics.traffic.requests["error"] += 1
        return _error(502, f"origin fetch failed: {exc}")
    result = fill.source or "origin"
    now = time.time()
    base = object_headers(info, now, now, node.config.serving.cache_control)
    base["X-EdgeFill-Result"] = "miss"
    p = plan(request.method, request.headers, validators(info))
    node.metrics.traffic.requests[result] += 1
    if p.span is None:
        return _respond_without_body(p, base)
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
        node.metrics.traffic.requests["error"] += 1
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
            node.metrics.traffic.requests["error"] += 1
            log.warning("client_aborted_fill_failed", key=fill.key, sent=pos, error=str(exc))
            # Abort (RST), never finish: a clean end would look like a complete short body.
            if request.transport is not None:
                request.transport.abort()
            return resp
        node.metrics.traffic.bytes[result] += p.span.length
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)
