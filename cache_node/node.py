"""The state one cache node shares between its ports, and its small helpers.

:class:`Node` is created by the app factory and filled in by the client app's
``cleanup_ctx`` (store recovery, origin client, loader), so every resource
has one owner and is torn down in reverse order. The metrics and peer apps
read the same object through their own typed app key.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from cache_node.bloom import CachedDigest
from cache_node.config import NodeConfig
from cache_node.loader import Loader
from cache_node.metrics import Metrics
from cache_node.peering import Peering
from cache_node.store import Entry, Store
from cache_node.tokens import load_keys

log = structlog.get_logger("cache_node.node")


class KeyRing:
    """The live token keys, re-read from the mounted Secret so rotation needs no restart.

    A bad reload (a third key, an unreadable file) keeps the previous keys and
    logs why: a half-rotated Secret must not lock every client out.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.keys: dict[str, bytes] = {}
        self.last_error: str | None = None

    def reload(self) -> None:
        if self.directory is None:
            return
        try:
            keys = load_keys(self.directory)
        except (OSError, ValueError) as exc:
            self.last_error = str(exc)
            log.error("token_keys_reload_failed", error=str(exc), kept=sorted(self.keys))
            return
        if sorted(keys) != sorted(self.keys):
            log.info("token_keys_loaded", key_ids=sorted(keys))
        self.keys = keys
        self.last_error = None


class MemoryTier:
    """Small hot objects kept in memory, bounded in bytes (LRU).

    Bytes are tied to the store entry they were read from: a replaced or
    evicted object is a different (or no) entry, so stale bytes are never sent.
    """

    def __init__(self, max_bytes: int, max_object_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[Entry, bytes]] = OrderedDict()

    def eligible(self, entry: Entry) -> bool:
        return self.max_bytes > 0 and entry.size <= min(self.max_object_bytes, self.max_bytes)

    def get(self, entry: Entry) -> bytes | None:
        item = self._items.get(entry.key)
        if item is None:
            return None
        if item[0] is not entry:
            self._drop(entry.key)
            return None
        self._items.move_to_end(entry.key)
        return item[1]

    def put(self, entry: Entry, data: bytes) -> None:
        self._drop(entry.key)
        self._items[entry.key] = (entry, data)
        self.bytes += len(data)
        while self.bytes > self.max_bytes and self._items:
            _, (_, gone) = self._items.popitem(last=False)
            self.bytes -= len(gone)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= len(item[1])


@dataclass
class Node:
    config: NodeConfig
    name: str
    metrics: Metrics = field(default_factory=Metrics)
    keyring: KeyRing = field(default_factory=lambda: KeyRing(None))
    store: Store | None = None
    loader: Loader | None = None
    memory: MemoryTier | None = None
    peering: Peering | None = None
    digest: CachedDigest = field(default_factory=CachedDigest)
    ready: bool = False
    # False while the process is still opening its client and peer listeners (set by
    # ``cache_node.__main__.serve``): /readyz must not send traffic to a closed port.
    listening: bool = True
    recovery_error: str | None = None
    started_at: float = field(default_factory=time.time)
    # Set by pre-positioning (cache_node.prepos): per-ContentSet progress for /status.
    fill_report: Callable[[], dict[str, Any]] | None = None
    # Called with the new configuration after a live reload (cache_node.app), e.g. the
    # tracker's settings; a restart-only section keeps its running value.
    on_config_reload: list[Callable[[NodeConfig], None]] = field(default_factory=list)

    @property
    def site(self) -> str:
        return f"{self.config.site.namespace}/{self.config.site.name}"
