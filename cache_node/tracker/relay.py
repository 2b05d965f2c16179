"""Owner routing between the members of a site: node-to-node tracker links.

A swarm lives on one member: the owner of its object by the same rendezvous
ranking as content (``cache_node.ring``). A client may reach any member (the
site's Service balances connections), so a member that does not own a swarm
passes that swarm's traffic to the member that does:

* HTTP announces are redirected (307) to the owner's public client URL when
  the EdgeSite publishes one per member, else forwarded over the link and
  answered with the owner's reply;
* WebSocket messages (announces with offers, answers, scrapes) are relayed
  over the link, tagged with the client connection's id, and whatever the
  owner sends to that client (its announce reply, offers and answers from
  other peers, wherever they are connected) comes back the same way.

A link is one WebSocket from a member to another member's client port at
:data:`LINK_PATH`, multiplexing every relayed client. It authenticates with
the site's peer secret (``Authorization: Bearer``, constant-time compared, as
on the peer port) and names the sending member; the owner believes the client
addresses a member reports (the member took them from the socket or from
trusted proxies). Without a peer secret there are no links: every member
serves the swarms it is asked about, since an unauthenticated link would let
anyone put any address into a peer list.

When a member cannot be reached (connection refused, handshake failed, link
dropped) it is skipped for :data:`DOWN_SECONDS` and the next-ranked member
takes its swarms, which may be this node itself: every member walks the same
ranking, so they all agree on the fallback. Memberships relayed over a link
that drops are re-announced (without offers) to the next route at once, so
peers stay findable before their clients' next announce.

Frames are JSON text, ``t`` says the kind::

    member -> owner  {"t": "ws", "sid", "addr", "token", "hints", "msg"}
                     {"t": "close", "sid"}
                     {"t": "http", "rid", "addr", "hints", "ann"}
    owner -> member  {"t": "ws", "sid", "msg"}
                     {"t": "http", "rid", "body"} | {"t": "http", "rid", "error": [status,
                                                     reason, message]}
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog

log = structlog.get_logger("edgefill.tracker")

LINK_PATH = "/tracker/v1/link"
MEMBER_HEADER = "X-EdgeFill-Member"
DOWN_SECONDS = 5.0
LINK_OUTBOX = 4096
LINK_MAX_MESSAGE = 256 * 1024
REQUEST_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 1.0

Frame = dict[str, Any]


class Membership(Protocol):
    """The site's members as the tracker sees them (read on every use: it may change)."""

    @property
    def me(self) -> str: ...

    def link_urls(self) -> Mapping[str, str]:
        """Member name -> base URL of its client port (``http://host:port``), all members."""
        ...

    def secret(self) -> bytes | None: ...


@dataclass(frozen=True)
class StaticMembership:
    """A fixed membership: a node config without live reload, and tests."""

    me: str
    urls: Mapping[str, str]
    peer_secret: bytes | None

    def link_urls(self) -> Mapping[str, str]:
        return self.urls

    def secret(self) -> bytes | None:
        return self.peer_secret


def client_base_from_peer_url(peer_url: str, client_port: int) -> str:
    """A member's client-port base URL: the host of its peer URL with the client port.

    The members of a site are pods of one StatefulSet and share the listen ports;
    only the address differs.
    """
    parts = urllib.parse.urlsplit(peer_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if parts.scheme == "https" else "http"
    return f"{scheme}://{host}:{client_port}"


def link_ws_url(base: str) -> str:
    base = base.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + LINK_PATH
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + LINK_PATH
    return base + LINK_PATH


class LinkError(Exception):
    """The link to a member failed while a request was in flight."""


@dataclass(eq=False)
class Link:
    """One open link to a member: a bounded outbox and replies by request id."""

    name: str
    ws: aiohttp.ClientWebSocketResponse
    outbox: asyncio.Queue[Frame | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=LINK_OUTBOX)
    )
    pending: dict[int, asyncio.Future[Frame]] = field(default_factory=dict)
    closed: bool = False
    dropped: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def send(self, frame: Frame) -> bool:
        """Queue a frame; False when the link is closed or its outbox is full."""
        if self.closed:
            return False
        try:
            self.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    async def request(self, frame: Frame) -> Frame:
        """Send a request frame and wait for its reply (at most ``REQUEST_TIMEOUT_SECONDS``)."""
        rid = next(self._ids)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        try:
            if not self.send({**frame, "rid": rid}):
                raise LinkError(f"link to {self.name} is closed or congested")
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                    return await future
            except TimeoutError:
                raise LinkError(
                    f"{self.name} did not answer within {REQUEST_TIMEOUT_SECONDS}s"
                ) from None
        finally:
            self.pending.pop(rid, None)

    def fail_pending(self) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(LinkError(f"link to {self.name} closed"))
        self.pending.clear()


class Links:
    """Outgoing links to the other members, opened on first use, one per member.

    ``on_frame(member, frame)`` receives what a member sends back for relayed
    clients; ``on_lost(member)`` runs when an open link drops.
    """

    def __init__(
        self,
        membership: Membership,
        *,
        on_frame: Callable[[str, Frame], None],
        on_lost: Callable[[str], None],
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.membership = membership
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._links: dict[str, Link] = {}
        self._connecting: dict[str, asyncio.Task[Link | None]] = {}
        self._down_until: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._closing = False

    def enabled(self) -> bool:
        return self.membership.secret() is not None and bool(self.membership.link_urls())

    def is_down(self, name: str) -> bool:
        return self._clock() < self._down_until.get(name, 0.0)

    def mark_down(self, name: str) -> None:
        self._down_until[name] = self._clock() + DOWN_SECONDS

    def open_link(self, name: str) -> Link | None:
        link = self._links.get(name)
        return link if link is not None and not link.closed else None

    def open_links(self) -> list[Link]:
        return [link for link in self._links.values() if not link.closed]

    async def get(self, name: str) -> Link | None:
        """The open link to ``name``, connecting if needed; None when it is down."""
        link = self.open_link(name)
        if link is not None:
            return link
        if self._closing or self.is_down(name):
            return None
        task = self._connecting.get(name)
        if task is None:
            task = asyncio.create_task(self._connect(name), name=f"tracker-link:{name}")
            self._connecting[name] = task
            task.add_done_callback(functools.partial(self._connected, name))
        return await asyncio.shield(task)

    def _connected(self, name: str, _task: asyncio.Task[Link | None]) -> None:
        self._connecting.pop(name, None)

    async def _connect(self, name: str) -> Link | None:
        base = self.membership.link_urls().get(name)
        secret = self.membership.secret()
        if base is None or secret is None:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(sock_connect=self._connect_timeout)
            )
        headers = {
            "Authorization": "Bearer " + secret.decode(),
            MEMBER_HEADER: self.membership.me,
        }
        try:
            async with asyncio.timeout(self._connect_timeout * 3):
                ws = await self._session.ws_connect(
                    link_ws_url(base),
                    headers=headers,
                    heartbeat=10.0,
                    max_msg_size=LINK_MAX_MESSAGE,
                    compress=0,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.mark_down(name)
            log.info("tracker_link_failed", member=name, error=str(exc) or type(exc).__name__)
            return None
        link = Link(name=name, ws=ws)
        self._links[name] = link
        self._spawn(self._write(link))
        self._spawn(self._read(link))
        log.info("tracker_link_open", member=name)
        return link

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, link: Link) -> None:
        while (frame := await link.outbox.get()) is not None:
            try:
                await link.ws.send_str(json.dumps(frame))
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                break
        with contextlib.suppress(Exception):
            await link.ws.close()

    async def _read(self, link: Link) -> None:
        try:
            async for msg in link.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(frame, dict):
                    continue
                rid = frame.get("rid")
                if isinstance(rid, int) and rid in link.pending:
                    future = link.pending.pop(rid)
                    if not future.done():
                        future.set_result(frame)
                    continue
                self._on_frame(link.name, frame)
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            link.closed = True
            link.fail_pending()
            with contextlib.suppress(asyncio.QueueFull):
                link.outbox.put_nowait(None)
            if self._links.get(link.name) is link:
                del self._links[link.name]
            if not self._closing:
                self.mark_down(link.name)
                log.info("tracker_link_lost", member=link.name)
                self._on_lost(link.name)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._connecting.values()):
            task.cancel()
        for link in list(self._links.values()):
            link.closed = True
            with contextlib.suppress(Exception):
                await link.ws.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
