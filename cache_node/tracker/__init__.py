"""Peer-assist tracker served by each cache node on its client port.

End users announce what they hold and get peers of the same site, nearest
first; browsers exchange WebRTC offers and answers through the WebSocket
tracker; native clients use BEP 3 HTTP announce with compact IPv4 and IPv6
peer lists. The cache node is always the web seed (manifest ``urlList``) and
signs each object's piece-hash manifest so clients can verify every piece a
peer sends.

The node wires it with :func:`register`; everything else here is plain code
over small protocols (:class:`PieceHashSource` for the store's piece hashes,
:class:`TokenGate` for content tokens) so it is tested without the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator

from aiohttp import web

from cache_node.config import NodeConfig
from cache_node.tracker.manifest import PieceHashSource, PieceInfo, swarm_id
from cache_node.tracker.relay import LINK_PATH, Membership, StaticMembership
from cache_node.tracker.service import (
    ObjectFiller,
    OpenGate,
    TokenGate,
    TrackerService,
    sweeper,
)
from cache_node.tracker.views import (
    SOCKETS,
    TRACKER,
    announce,
    close_sockets,
    manifest,
    manifest_keys,
    member_link,
    scrape,
)

__all__ = [
    "TRACKER",
    "Membership",
    "ObjectFiller",
    "PieceHashSource",
    "PieceInfo",
    "StaticMembership",
    "TokenGate",
    "TrackerService",
    "register",
    "swarm_id",
]

SWEEP_PERIOD_SECONDS = 30.0


def register(
    app: web.Application,
    config: NodeConfig,
    *,
    hashes: PieceHashSource,
    node_name: str,
    web_seed_url: str,
    gate: TokenGate | None = None,
    membership: Membership | None = None,
    filler: ObjectFiller | None = None,
) -> None:
    """Add the tracker routes and lifecycle to the node's client app.

    ``gate`` defaults to the content token check when ``tokens.enabled`` (so
    announces need the same tokens as content) and to an open gate otherwise.
    ``membership`` (the site's members, for owner routing) defaults to the
    config's peering members; ``filler`` lets ``/manifest`` fill objects this
    node does not hold yet. Nothing is added when ``tracker.enabled`` is false.
    """
    if not config.tracker.enabled:
        return
    if gate is None:
        if config.tokens.enabled:
            from cache_node.tracker.gate import ContentTokenGate

            gate = ContentTokenGate(config.tokens)
        else:
            gate = OpenGate()
    service = TrackerService.from_config(
        config,
        hashes=hashes,
        node_name=node_name,
        web_seed_url=web_seed_url,
        gate=gate,
        membership=membership,
        filler=filler,
    )
    app[TRACKER] = service
    app[SOCKETS] = weakref.WeakSet()
    app.router.add_get("/announce", announce)
    app.router.add_get("/scrape", scrape)
    app.router.add_get("/manifest-keys", manifest_keys)
    app.router.add_get("/manifest/{key:.+}", manifest)
    app.router.add_get(LINK_PATH, member_link)
    app.on_shutdown.append(close_sockets)
    app.cleanup_ctx.append(_lifecycle)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(sweeper(app[TRACKER], SWEEP_PERIOD_SECONDS))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[TRACKER].close()
