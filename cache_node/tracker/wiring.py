"""Wiring into the cache node: the store as PieceHashSource, the node's key ring as gate.

``cache_node.app.create_apps`` takes extensions ``(app, config) -> None`` that run
before the object catch-all route; :func:`extension` builds the tracker's. The
store and key ring are created later (in the client app's cleanup context), so
both adapters look them up on each call through the app's ``NODE`` key.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from cache_node import tokens
from cache_node.appkeys import NODE
from cache_node.config import NodeConfig
from cache_node.tracker import register
from cache_node.tracker.manifest import PieceInfo
from cache_node.tracker.service import OpenGate, TokenGate

_DERIVED = "tracker.piece_info"


class StorePieceHashes:
    """Piece hashes of committed objects in the node's store (the same pieces it serves)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def piece_info(self, key: str) -> PieceInfo | None:
        store = self._app[NODE].store
        if store is None:
            return None  # still recovering: no manifests, no swarms yet
        entry = store.peek(key)  # a manifest or announce is not a content access
        if entry is None:
            return None
        cached = entry.derived.get(_DERIVED)
        if isinstance(cached, PieceInfo):
            return cached
        meta = entry.meta
        info = PieceInfo(
            size=meta.info.size,
            piece_size=meta.piece_size,
            sha256=tuple(bytes.fromhex(h) for h in meta.piece_hashes),
            etag=meta.info.etag,
        )
        entry.derived[_DERIVED] = info  # dropped with the entry when it is replaced
        return info


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
        )

    return install
