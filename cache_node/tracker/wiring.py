"""Wiring into the cache node: the store as PieceHashSource, the node's key ring as gate,
the live peering membership for owner routing, and the loader as ObjectFiller.

``cache_node.app.create_apps`` takes extensions ``(app, config) -> None`` that run
before the object catch-all route; :func:`extension` builds the tracker's. The
store and key ring are created later (in the client app's cleanup context), so
both adapters look them up on each call through the app's ``NODE`` key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from cache_node import tokens
from cache_node.appkeys import NODE
from cache_node.config import NodeConfig
from cache_node.loader import Fill, FillFailedError
from cache_node.peering import Hop, read_secret
from cache_node.store import Entry, Store
from cache_node.tracker import register
from cache_node.tracker.manifest import PieceInfo
from cache_node.tracker.relay import client_base_from_peer_url
from cache_node.tracker.service import FillUnavailableError, OpenGate, TokenGate
from cache_node.tracker.views import TRACKER

_DERIVED = "tracker.piece_info"


class StorePieceHashes:
    """Piece hashes of committed objects in the node's store (the same pieces it serves).

    The store keeps CRC-32 piece checksums; the SHA-256 a manifest signs is computed
    from the stored bytes when an object's manifest or swarm is first asked for
    (see :func:`piece_info_of`), so only objects that peer assist uses pay for it.
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def piece_info(self, key: str) -> PieceInfo | None:
        store = self._app[NODE].store
        if store is None:
            return None  # still recovering: no manifests, no swarms yet
        entry = store.peek(key)  # a manifest or announce is not a content access
        if entry is None:
            return None
        return await piece_info_of(store, entry)


async def piece_info_of(store: Store, entry: Entry) -> PieceInfo | None:
    """The piece info of a committed entry, computed once per entry (``None``: its data
    turned out damaged, and the store dropped it).

    Callers asking while it is computed share that computation (single-flight); one
    that is cancelled does not cancel it for the others.
    """
    cached = entry.derived.get(_DERIVED)
    if isinstance(cached, PieceInfo):
        return cached
    if not isinstance(cached, asyncio.Future):
        cached = asyncio.ensure_future(_piece_info(store, entry))
        entry.derived[_DERIVED] = cached  # dropped with the entry when it is replaced
        cached.add_done_callback(lambda done: _settle(entry, done))
    info: PieceInfo | None = await asyncio.shield(cached)
    return info


def _settle(entry: Entry, done: asyncio.Future[PieceInfo | None]) -> None:
    """Keep a computed piece info; forget a failed computation (the next caller retries)."""
    if entry.derived.get(_DERIVED) is not done:
        return
    if done.cancelled() or done.exception() is not None or done.result() is None:
        del entry.derived[_DERIVED]
    else:
        entry.derived[_DERIVED] = done.result()


async def _piece_info(store: Store, entry: Entry) -> PieceInfo | None:
    sha256 = await store.piece_sha256(entry)
    if sha256 is None:
        return None
    meta = entry.meta
    return PieceInfo(
        size=meta.info.size,
        piece_size=meta.piece_size,
        sha256=tuple(bytes.fromhex(h) for h in sha256),
        etag=meta.info.etag,
    )


class LoaderFiller:
    """Fills an object the way a client request would: the key's owner, parents, origin."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def fill(self, key: str) -> PieceInfo | None:
        node = self._app[NODE]
        if node.loader is None or not node.ready:
            raise FillUnavailableError("the node is still starting (store recovery)")
        before = node.peering.chain(key, Hop()) if node.peering is not None else []
        found = await node.loader.lookup(key, before)
        try:
            entry = found if isinstance(found, Entry) else await _committed(found)
        except FillFailedError as exc:
            if exc.not_found:
                return None
            raise FillUnavailableError(str(exc)) from None
        if node.store is None:
            raise FillUnavailableError("the node is shutting down")
        info = await piece_info_of(node.store, entry)
        if info is None:
            raise FillUnavailableError(f"{key}: the stored copy was damaged; it is fetched anew")
        return info


async def _committed(fill: Fill) -> Entry:
    """Wait for a fill to commit (every byte written and hashed) or fail."""
    _, _, epoch = await fill.wait_info()
    while not fill.done:
        try:
            await fill.wait_bytes(fill.written, epoch)
        except FillFailedError:
            if fill.error is not None:
                raise
            _, _, epoch = await fill.wait_info()  # restarted from zero: follow the new epoch
    if fill.entry is None:
        raise fill.error or FillFailedError(f"{fill.key}: fill ended without an object")
    return fill.entry


class NodeMembership:
    """The node's live peering membership (config reloads change it without a restart)."""

    def __init__(self, app: web.Application, me: str) -> None:
        self._app = app
        self._me = me

    @property
    def me(self) -> str:
        return self._me

    def link_urls(self) -> Mapping[str, str]:
        config = self._app[NODE].config
        port = config.listen.client_port
        return {m.name: client_base_from_peer_url(m.peer_url, port) for m in config.peering.members}

    def secret(self) -> bytes | None:
        node = self._app[NODE]
        if node.peering is not None:
            return node.peering.secret
        return read_secret(node.config.peering.secret_file)


class KeyRingGate:
    """Content tokens checked against the node's live key ring (rotation included)."""

    def __init__(
        self, app: web.Application, skew: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._app = app
        self._skew = skew
        self._clock = clock

    def check(self, token: str | None, key: str) -> tuple[int, str] | None:
        try:
            tokens.verify(token, key, self._app[NODE].keyring.keys, self._clock(), self._skew)
        except tokens.TokenRejectedError as exc:
            return exc.status, exc.reason
        return None


def extension(
    *, node_name: str, web_seed_url: str
) -> Callable[[web.Application, NodeConfig], None]:
    """The tracker as a ``create_apps`` extension for this node."""

    def install(app: web.Application, config: NodeConfig) -> None:
        gate: TokenGate = (
            KeyRingGate(app, config.tokens.clock_skew_seconds)
            if config.tokens.enabled
            else OpenGate()
        )
        register(
            app,
            config,
            hashes=StorePieceHashes(app),
            node_name=node_name,
            web_seed_url=web_seed_url,
            gate=gate,
            membership=NodeMembership(app, node_name),
            filler=LoaderFiller(app),
        )
        if TRACKER in app:  # reloaded configuration (a re-rendered ConfigMap) reaches it live
            app[NODE].on_config_reload.append(app[TRACKER].reconfigure)

    return install
