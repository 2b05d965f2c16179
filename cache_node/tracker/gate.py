"""The content token check, applied to announces and manifests.

Announces are gated by the same tokens as content: a token whose scope covers
an object lets its holder fetch the object, its manifest, and join its swarm.
This adapter plugs :mod:`cache_node.tokens` into the tracker's ``TokenGate``
protocol. Keys are re-read when the mounted Secret changes (Kubernetes swaps
the ``..data`` link on rotation), checked at most every ``reload_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog

from cache_node import tokens
from cache_node.config import Tokens

log = structlog.get_logger("edgefill.tracker")


class ContentTokenGate:
    def __init__(
        self,
        settings: Tokens,
        *,
        reload_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.keys_dir:
            raise ValueError("tokens.enabled needs tokens.keysDir")
        self._dir = Path(settings.keys_dir)
        self._skew = settings.clock_skew_seconds
        self._reload = reload_seconds
        self._clock = clock
        self._keys = tokens.load_keys(self._dir)
        self._stamp = self._dir_stamp()
        self._checked = clock()

    def _dir_stamp(self) -> float:
        return max((p.stat().st_mtime for p in self._dir.iterdir()), default=0.0)

    def _maybe_reload(self, now: float) -> None:
        if now - self._checked < self._reload:
            return
        self._checked = now
        try:
            stamp = self._dir_stamp()
            if stamp != self._stamp:
                self._keys = tokens.load_keys(self._dir)
                self._stamp = stamp
                log.info("token_keys_reloaded", count=len(self._keys))
        except (OSError, ValueError) as exc:
            # Keep serving with the keys we have; a half-written Secret is transient.
            log.warning("token_keys_reload_failed", error=str(exc))

    def check(self, token: str | None, key: str) -> tuple[int, str] | None:
        now = self._clock()
        self._maybe_reload(now)
        try:
            tokens.verify(token, key, self._keys, now, self._skew)
        except tokens.TokenRejectedError as exc:
            return exc.status, exc.reason
        return None
