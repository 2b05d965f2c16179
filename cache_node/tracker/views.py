"""aiohttp views of the tracker: unpack the request, call the service, map errors.

Routes (added to the node's client app by :func:`cache_node.tracker.register`):

* ``GET /announce``: BEP 3 announce; with ``Upgrade: websocket`` the WebTorrent
  WebSocket tracker on the same URL (what ``ws://host/announce`` clients expect).
* ``GET /scrape``: BEP 48 scrape of named info-hashes.
* ``GET /manifest/{key}``: the signed piece-hash manifest of an object.
* ``GET /manifest-keys``: the manifest signing public keys (JWK set).
* ``GET /tracker/v1/link``: a member's link (WebSocket, site peer secret), over
  which it relays the swarms this node owns (``relay.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import urllib.parse
import weakref
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from cache_node import objkeys
from cache_node.peering import PeerAuthError, check_auth
from cache_node.tracker import bencode
from cache_node.tracker.addresses import IPAddress
from cache_node.tracker.relay import LINK_MAX_MESSAGE, LINK_OUTBOX, MEMBER_HEADER, Frame
from cache_node.tracker.service import (
    HttpAnnounce,
    MemberLink,
    RedirectError,
    RejectedError,
    TrackerService,
    WsPeerSession,
)
from cache_node.tracker.swarms import Event

log = structlog.get_logger("edgefill.tracker")

TRACKER: web.AppKey[TrackerService] = web.AppKey("edgefill_tracker", TrackerService)
SOCKETS = web.AppKey("edgefill_tracker_sockets", weakref.WeakSet[web.WebSocketResponse])

WS_MAX_MESSAGE = 64 * 1024
WS_OUTBOX = 256
MAX_QUERY_FIELDS = 64
MAX_KEY_HINTS = 16
OBJECT_PARAM = "object"


Query = dict[str, list[bytes]]


def _query(request: web.Request) -> Query:
    """The raw query as name -> values (bytes): info_hash and peer_id are binary, not UTF-8.

    A hand-rolled split instead of ``parse_qsl``: this runs on every announce,
    and most values need no unescaping at all. ``+`` means a space, as in forms.
    """
    raw = request.rel_url.raw_query_string
    out: Query = {}
    if not raw:
        return out
    fields = raw.split("&")
    if len(fields) > MAX_QUERY_FIELDS:
        raise RejectedError(400, "malformed", f"more than {MAX_QUERY_FIELDS} query fields")
    for item in fields:
        if not item:
            continue
        name, _, value = item.partition("=")
        if "%" in name or "+" in name:
            name = urllib.parse.unquote_plus(name, encoding="latin-1")
        if "%" in value or "+" in value:
            decoded = urllib.parse.unquote_to_bytes(value.replace("+", " "))
        else:
            decoded = value.encode("utf-8", "surrogateescape")
        values = out.get(name)
        if values is None:
            out[name] = [decoded]
        else:
            values.append(decoded)
    return out


def _one(pairs: Query, name: str) -> bytes | None:
    values = pairs.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise RejectedError(400, "malformed", f"{name} given more than once")
    return values[0]


def _int(pairs: Query, name: str, *, required: bool = False) -> int | None:
    raw = _one(pairs, name)
    if raw is None or raw == b"":
        if required:
            raise RejectedError(400, "malformed", f"{name} is required")
        return None
    if not raw.lstrip(b"-").isdigit() or len(raw) > 20:
        raise RejectedError(400, "malformed", f"{name} must be an integer")
    return int(raw)


def _id(pairs: Query, name: str) -> bytes:
    raw = _one(pairs, name)
    if raw is None or len(raw) != 20:
        raise RejectedError(400, "malformed", f"{name} must be exactly 20 bytes (URL-encoded)")
    return raw


def _utf8(raw: bytes | None, name: str) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectedError(400, "malformed", f"{name} is not UTF-8") from None


@functools.lru_cache(maxsize=4096)
def _normalised(raw: str) -> str:
    return objkeys.normalise(raw)  # object hints repeat on every announce of a swarm


def _key(raw: str) -> str:
    try:
        return _normalised(raw)
    except objkeys.KeyRejectedError as exc:
        raise RejectedError(exc.status, "malformed", exc.reason) from None


def _token(service: TrackerService, request: web.Request, pairs: Query) -> str | None:
    tokens = service.token_settings
    from_query = _utf8(_one(pairs, tokens.query_param), tokens.query_param)
    return from_query or request.headers.get(tokens.header)


def _source(service: TrackerService, request: web.Request) -> IPAddress:
    return service.source(request.remote, request.headers.getall("X-Forwarded-For", []))


def parse_announce(service: TrackerService, request: web.Request, pairs: Query) -> HttpAnnounce:
    port = _int(pairs, "port", required=True)
    if port is None or not 1 <= port <= 65535:
        raise RejectedError(400, "malformed", "port must be 1..65535")
    counters = {}
    for name in ("uploaded", "downloaded", "left"):
        value = _int(pairs, name)
        if value is not None and value < 0:
            raise RejectedError(400, "malformed", f"{name} must not be negative")
        counters[name] = value
    try:
        event = Event.parse(_utf8(_one(pairs, "event"), "event"))
    except ValueError as exc:
        raise RejectedError(400, "malformed", str(exc)) from None
    # ``object`` names the object the swarm is for (``key`` is taken: BitTorrent
    # clients send a random session key under that name).
    hint = _utf8(_one(pairs, OBJECT_PARAM), OBJECT_PARAM)
    key_hint = _key(hint) if hint is not None else None
    return HttpAnnounce(
        info_hash=_id(pairs, "info_hash"),
        peer_id=_id(pairs, "peer_id"),
        port=port,
        uploaded=counters["uploaded"] or 0,
        downloaded=counters["downloaded"] or 0,
        left=counters["left"],
        event=event,
        numwant=_int(pairs, "numwant"),
        compact=_one(pairs, "compact") != b"0",
        no_peer_id=_one(pairs, "no_peer_id") == b"1",
        key_hint=key_hint,
        token=_token(service, request, pairs),
    )


def _failure(exc: RejectedError, status: int = 200) -> web.Response:
    """A BEP 3 failure: a bencoded ``failure reason`` dict, sent with HTTP 200.

    BitTorrent clients read the body of a 200 and report its reason; many treat
    any other status as a transport error and never show why. Rate limiting
    adds BEP 31 ``retry in`` (whole minutes) and ``Retry-After`` (seconds).
    The WebSocket upgrade, which is not BitTorrent, keeps real HTTP statuses.
    """
    headers = {}
    body: dict[str, bencode.Bencodable] = {"failure reason": exc.message}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(exc.retry_after + 0.999))
        body["retry in"] = max(1, int(exc.retry_after / 60 + 0.999))
    return web.Response(
        status=status,
        body=bencode.encode(body),
        content_type="text/plain",
        headers=headers,
    )


async def announce(request: web.Request) -> web.StreamResponse:
    service = request.app[TRACKER]
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await websocket(request)
    try:
        addr = _source(service, request)
        pairs = _query(request)
        ann = parse_announce(service, request, pairs)
        body = await service.http_announce(ann, addr)
    except RedirectError as moved:
        query = request.rel_url.raw_query_string
        if ann.key_hint is None:  # the owner may not know the info-hash yet: name the object
            query += "&" + urllib.parse.urlencode({OBJECT_PARAM: moved.key})
        raise web.HTTPTemporaryRedirect(f"{moved.base}/announce?{query}") from None
    except RejectedError as exc:
        return _failure(exc)
    return web.Response(body=body, headers={"Content-Type": "text/plain"})


async def scrape(request: web.Request) -> web.StreamResponse:
    service = request.app[TRACKER]
    try:
        addr = _source(service, request)
        pairs = _query(request)
        hashes = pairs.get("info_hash", [])
        if any(len(h) != 20 for h in hashes):
            raise RejectedError(
                400, "malformed", "info_hash must be exactly 20 bytes (URL-encoded)"
            )
        # The scrape URL is the announce URL with its last segment replaced
        # (BEP 48), so it carries the announce's object= hint too.
        hint = _utf8(_one(pairs, OBJECT_PARAM), OBJECT_PARAM)
        hints = [_key(hint)] if hint is not None else []
        body = await service.http_scrape(hashes, addr, _token(service, request, pairs), hints)
    except RejectedError as exc:
        return _failure(exc)
    return web.Response(body=body, content_type="text/plain")


async def manifest(request: web.Request) -> web.StreamResponse:
    service = request.app[TRACKER]
    try:
        addr = _source(service, request)
        service.admit(addr)
        pairs = _query(request)
        raw_path = request.rel_url.raw_path
        key = _key(raw_path[len("/manifest/") :])
        doc = await service.manifest(key, _token(service, request, pairs))
    except RedirectError as moved:
        query = request.rel_url.raw_query_string
        target = f"{moved.base}/manifest/{urllib.parse.quote(moved.key)}"
        raise web.HTTPTemporaryRedirect(target + (f"?{query}" if query else "")) from None
    except RejectedError as exc:
        return web.json_response(
            {"error": exc.reason, "message": exc.message},
            status=exc.status,
            headers={"Retry-After": str(int(exc.retry_after + 0.999))} if exc.retry_after else None,
        )
    # Manifests are immutable per ETag; the signature makes caching them safe.
    return web.json_response(doc, headers={"Cache-Control": "public, max-age=300"})


async def manifest_keys(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        request.app[TRACKER].public_keys(), headers={"Cache-Control": "public, max-age=300"}
    )


async def websocket(request: web.Request) -> web.StreamResponse:
    """The WebTorrent tracker socket: one peer, many swarms, JSON text frames."""
    service = request.app[TRACKER]
    try:
        addr = _source(service, request)
        service.admit(addr)
        pairs = _query(request)
        hints: list[str] = []
        for value in pairs.get(OBJECT_PARAM, [])[:MAX_KEY_HINTS]:
            hints.append(_key(_utf8(value, OBJECT_PARAM) or ""))
        token = _token(service, request, pairs)
    except RejectedError as exc:
        return _failure(exc, exc.status)

    ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, heartbeat=30.0, compress=False)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=WS_OUTBOX)
    closing: list[asyncio.Future[bool]] = []

    def enqueue(message: dict[str, Any]) -> None:
        try:
            outbox.put_nowait(message)
        except asyncio.QueueFull:
            # A peer that cannot keep up is dropped rather than buffered without bound.
            if not session.closed:
                session.closed = True
                closing.append(asyncio.ensure_future(ws.close(code=1013, message=b"too slow")))

    session = WsPeerSession(addr=addr, sender=enqueue, token=token, key_hints=tuple(hints))

    async def writer() -> None:
        while (message := await outbox.get()) is not None:
            if ws.closed:
                return
            try:
                await ws.send_str(json.dumps(message))
            except ConnectionError:
                return

    writer_task = asyncio.create_task(writer())
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                try:
                    parsed = json.loads(msg.data)
                except ValueError:
                    session.send({"failure reason": "messages must be JSON"})
                    continue
                await service.ws_message(session, parsed)
            elif msg.type is WSMsgType.BINARY:
                session.send({"failure reason": "binary frames are not part of this protocol"})
            elif msg.type is WSMsgType.ERROR:
                break
    finally:
        service.ws_closed(session)
        with contextlib.suppress(asyncio.QueueFull):
            outbox.put_nowait(None)
        if not outbox.empty() and outbox.full():
            writer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(writer_task, timeout=5.0)
        for fut in closing:
            with contextlib.suppress(Exception):
                await fut
    return ws


async def member_link(request: web.Request) -> web.StreamResponse:
    """Another member's link: it relays the clients of swarms this node owns."""
    service = request.app[TRACKER]
    member = request.headers.get(MEMBER_HEADER, "")
    try:
        # Charged like any tracker request: guessing the secret is throttled per source.
        service.admit(_source(service, request))
    except RejectedError as exc:
        return _failure(exc, exc.status)
    try:
        check_auth(request.headers.get("Authorization"), service.membership.secret())
    except PeerAuthError as exc:
        return web.Response(status=401, text=f"{exc}\n")
    if member not in service.member_names() or member == service.node_name:
        return web.Response(status=403, text=f"{member!r} is not another member of this site\n")
    ws = web.WebSocketResponse(max_msg_size=LINK_MAX_MESSAGE, heartbeat=30.0, compress=False)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    outbox: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=LINK_OUTBOX)

    def enqueue(frame: Frame) -> None:
        # Signalling is best effort: past a full outbox, frames are dropped (and
        # the clients re-announce) rather than buffered without bound.
        with contextlib.suppress(asyncio.QueueFull):
            outbox.put_nowait(frame)

    peer = MemberLink(member=member, sender=enqueue)

    async def writer() -> None:
        while (frame := await outbox.get()) is not None:
            try:
                await ws.send_str(json.dumps(frame))
            except ConnectionError:
                return

    writer_task = asyncio.create_task(writer())
    log.info("tracker_member_link", member=member)
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
            except ValueError:
                continue
            reply = await service.member_frame(peer, frame)
            if reply is not None:
                enqueue(reply)
    finally:
        service.member_link_closed(peer)
        writer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer_task
    return ws


async def close_sockets(app: web.Application) -> None:
    """On shutdown, close tracker sockets (1001) so clients re-announce to another node."""
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=1001, message=b"node shutting down")
