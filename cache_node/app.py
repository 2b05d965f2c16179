"""App factory: one :class:`Node`, three aiohttp apps (client, peer, metrics).

Resources are owned by the client app's ``cleanup_ctx`` and torn down in
reverse order: the store (recovered in the background, so liveness answers
while a large store is scanned), the token key ring (re-read periodically for
rotation), the S3 origin client, and the loader with its fills.

Extensions (the peer-assist tracker, peering) register their routes through
``extensions``: callables ``(app, config) -> None`` run before the object
catch-all route, so their paths win over object keys of the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from cache_node import ops, peer_views, serve
from cache_node.appkeys import NODE
from cache_node.config import NodeConfig, load
from cache_node.fastlane import Answer, routed_elsewhere
from cache_node.loader import Loader, RetryPolicy
from cache_node.node import KeyRing, MemoryTier, Node
from cache_node.origin import S3Origin
from cache_node.peering import DIGEST_PATH, OBJECTS_PATH, Peering, read_secret
from cache_node.store import Store
from cache_node.upstream import Upstream

log = structlog.get_logger("cache_node.app")

Extension = Callable[[web.Application, NodeConfig], None]
KEY_RELOAD_SECONDS = 10.0
CONFIG_POLL_SECONDS = 5.0


@dataclass
class Apps:
    node: Node
    client: web.Application
    peer: web.Application
    metrics: web.Application


def _make_store(node: Node) -> Store:
    cfg = node.config.store
    return Store(
        Path(cfg.path),
        max_bytes=cfg.max_bytes,
        piece_size=cfg.piece_size_bytes,
        policy=cfg.eviction_policy,
    )


def _resources(
    node: Node,
    upstreams_before_origin: Sequence[Upstream],
    config_path: Path | None,
    config_poll_seconds: float,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        cfg = node.config
        store = _make_store(node)
        node.store = store
        node.metrics.watch_store(store, lambda: node.loader.in_progress() if node.loader else 0)
        node.memory = MemoryTier(cfg.store.memory_tier_bytes, cfg.serving.memory_object_max_bytes)
        if cfg.tokens.enabled:
            node.keyring = KeyRing(Path(cfg.tokens.keys_dir) if cfg.tokens.keys_dir else None)
            node.keyring.reload()
        origin = S3Origin(cfg.origin)
        await origin.start()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.origin.max_connections),
            timeout=aiohttp.ClientTimeout(
                sock_connect=cfg.peering.connect_timeout_seconds,
                sock_read=cfg.origin.read_timeout_seconds,
            ),
            auto_decompress=False,
        )
        node.peering = Peering(
            site=node.site,
            me=node.name,
            config=cfg.peering,
            secret=read_secret(cfg.peering.secret_file),
            session=session,
        )
        node.loader = Loader(
            store,
            [*upstreams_before_origin, origin],
            RetryPolicy(
                max_attempts=cfg.origin.max_attempts,
                total_deadline=cfg.origin.total_deadline_seconds,
            ),
            on_origin_request=node.metrics.origin_request,
            on_fill_done=node.metrics.fill_done,
            on_upstream_failure=node.metrics.upstream_failure,
            not_found_ttl=lambda: node.config.serving.not_found_ttl_seconds,
            on_negative_hit=node.metrics.negative_hit,
        )
        background = [
            asyncio.create_task(_recover(node, store), name="store-recovery"),
            asyncio.create_task(_reload_keys(node), name="token-keys"),
            asyncio.create_task(node.peering.digest_loop(), name="sibling-digests"),
        ]
        if config_path is not None:
            background.append(
                asyncio.create_task(
                    _watch_config(node, config_path, config_poll_seconds), name="config-watch"
                )
            )
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            node.ready = False
            await node.loader.close()
            await session.close()
            await origin.close()
            if store.ready:
                store.close()
            log.info("node_stopped", node=node.name, site=node.site)

    return resources


async def _recover(node: Node, store: Store) -> None:
    cfg = node.config.store
    try:
        unverified = await asyncio.to_thread(store.recover, cfg.recovery_deadline_seconds)
    except Exception as exc:
        node.recovery_error = str(exc)
        log.error("store_recovery_failed", error=str(exc))
        return
    node.ready = True
    log.info(
        "store_recovered",
        node=node.name,
        site=node.site,
        objects=store.stats.objects,
        bytes=store.stats.bytes,
        unverified=len(unverified),
        discarded_files=store.stats.discarded_files,
    )
    if unverified:
        checked = await store.verify_all(unverified, cfg.recovery_deadline_seconds)
        log.info("store_verified", checked=checked, corrupt=store.stats.corrupt_objects)


async def _watch_config(node: Node, path: Path, poll_seconds: float) -> None:
    """Pick up re-rendered ConfigMaps: membership, upstreams and the fill plan, no restart.

    Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file's
    contents are compared, not its mtime. Sections that need a restart (store,
    listen, origin) keep their running values; an invalid render is logged and
    the last good configuration stays.
    """
    last = b""
    while True:
        try:
            raw = await asyncio.to_thread(path.read_bytes)
            if raw != last:
                last = raw
                new = _reloadable(node.config, load(path))
                if new != node.config:
                    _apply_config(node, new)
        except Exception as exc:  # an invalid render must not take the node down
            log.error("config_reload_failed", path=str(path), error=str(exc))
        await asyncio.sleep(poll_seconds)


def _reloadable(current: NodeConfig, loaded: NodeConfig) -> NodeConfig:
    """The loaded file with the sections that need a restart kept as running."""
    return loaded.model_copy(
        update={"store": current.store, "listen": current.listen, "origin": current.origin}
    )


def _apply_config(node: Node, new: NodeConfig) -> None:
    node.config = new
    if node.peering is not None:
        node.peering.update(new.peering, read_secret(new.peering.secret_file))
    for listener in node.on_config_reload:
        listener(new)
    log.info("config_reloaded", members=sorted(m.name for m in new.peering.members))


async def _reload_keys(node: Node) -> None:
    while True:
        await asyncio.sleep(KEY_RELOAD_SECONDS)
        node.keyring.reload()


def create_apps(
    config: NodeConfig,
    node_name: str,
    *,
    extensions: Sequence[Extension] = (),
    upstreams: Sequence[Upstream] = (),
    config_path: Path | None = None,
    config_poll_seconds: float = CONFIG_POLL_SECONDS,
) -> Apps:
    """Build the node's three apps; run them with :func:`cache_node.__main__.serve`."""
    node = Node(config=config, name=node_name)

    client = web.Application(middlewares=[serve.http_rules])
    client[NODE] = node
    client.cleanup_ctx.append(_resources(node, upstreams, config_path, config_poll_seconds))
    for extension in extensions:
        extension(client, config)
    client.router.add_route("*", "/{key:.*}", serve.handle_object)

    peer = web.Application()
    peer[NODE] = node
    peer.router.add_get(DIGEST_PATH, peer_views.peer_digest)
    peer.router.add_route("*", OBJECTS_PATH + "{key:.+}", peer_views.peer_object)

    metrics = web.Application()
    metrics[NODE] = node
    metrics.router.add_get("/metrics", ops.metrics_view)
    metrics.router.add_get("/healthz", ops.healthz)
    metrics.router.add_get("/readyz", ops.readyz)
    metrics.router.add_get("/status", ops.status)
    return Apps(node=node, client=client, peer=peer, metrics=metrics)


def fast_lane(apps: Apps) -> Answer:
    """The client port's fast-lane answer (:mod:`cache_node.fastlane`) for ``apps``.

    Call it once every extension has added its routes: paths the client app routes
    elsewhere (the tracker's, for one) are left to the router.
    """
    claimed = routed_elsewhere(apps.client, serve.handle_object)
    return functools.partial(serve.fast_answer, apps.node, claimed)
