"""The load path: local store, then the upstream chain, the origin last.

Read like groupcache's ``Group.load``: :meth:`Loader.lookup` returns either a
committed store entry (a hit) or a :class:`Fill` in progress. Concurrent
misses for one key share one :class:`Fill` (single-flight): the first miss
starts it, later ones join it, and every waiter reads the same temp file as it
grows (cut-through: the first byte reaches clients while the rest is still in
flight, never store-and-forward).

A fill runs as its own task, detached from the request that started it: a
client that disconnects does not cancel the fetch other clients wait on.

Within a fill:

* sources are tried in order (owner peer, parent/sibling, origin) until one
  opens; a definitive 404 from the origin ends the fill;
* a body that breaks off is resumed from the bytes held with ``Range`` and
  ``If-Match``; a 412 (:class:`ChangedError`) restarts from zero, and readers
  that already sent bytes of the old version are aborted (their ``epoch``
  no longer matches);
* attempts are bounded by ``origin.maxAttempts`` with exponential backoff and
  full jitter, and the whole fill by ``origin.totalDeadlineSeconds``;
* the object is committed only when its length matches (every piece then has
  its checksum); on any failure the temp file is dropped and readers see
  :class:`FillFailedError`, which the view turns into an aborted connection;
* when the source sent the body's CRC-32 (:attr:`Opened.crc32`), the body must
  match it: a damaged body is dropped and fetched again from zero, and
  readers never get its last byte (a complete response is a verified one).

Negative cache: a definitive 404 from the origin is remembered for
``serving.notFoundTtlSeconds`` (:class:`NegativeCache`), so a flood of requests
for a missing key costs one origin GET per TTL, not one per request. It sits
behind single-flight: requests that arrive while the fill that learns the 404
is running share that fill's answer; requests after it hit the negative entry.
Only client-facing lookups consult it (``respect_negative``): pre-positioning
asks the origin itself, and a committed object always wins over an entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from cache_node.store import ChecksumMismatchError, Entry, ObjectInfo, Store, Writer
from cache_node.upstream import (
    ChangedError,
    NotFoundError,
    Opened,
    Source,
    Upstream,
    UpstreamError,
)

log = structlog.get_logger("cache_node.loader")


class FillFailedError(Exception):
    """The fill a reader waited on failed; ``not_found`` when the origin has no such key."""

    def __init__(self, reason: str, *, not_found: bool = False) -> None:
        super().__init__(reason)
        self.not_found = not_found


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 5.0
    total_deadline: float = 300.0

    def delay(self, attempt: int) -> float:
        """Full-jitter exponential backoff (AWS Architecture Blog, 2015)."""
        cap = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(0, cap)  # noqa: S311 - jitter, not cryptography


class NegativeCache:
    """Keys the origin answered 404 for, each until its expiry (monotonic seconds).

    Bounded (oldest insertions dropped first) so a scan of random missing keys
    cannot grow memory without limit; expired entries are dropped when met.
    """

    def __init__(self, max_entries: int = 65_536) -> None:
        self.max_entries = max_entries
        self._until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def holds(self, key: str, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._until[key]
            return False
        return True

    def add(self, key: str, now: float, ttl: float) -> None:
        if ttl <= 0:
            return
        self._until.pop(key, None)
        self._until[key] = now + ttl
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def discard(self, key: str) -> None:
        self._until.pop(key, None)


class Fill:
    """One in-progress fetch of one key, shared by every waiter."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.info: ObjectInfo | None = None
        self.writer: Writer | None = None
        self.source: Source | None = None
        self.epoch = 0
        self.entry: Entry | None = None
        self.error: FillFailedError | None = None
        self.done = False
        self.waiters = 0
        # Set by the lookup that starts the fill (pre-positioning): the store piece size
        # of the new object and the placement its commit records, so the meta document
        # is written once. A client miss leaves the store's defaults (dynamic, the
        # store's piece size); a pre-positioning lookup that joins it sets the placement
        # for the commit, but the piece size of a started writer no longer changes.
        self.piece_size: int | None = None
        self.pinned = False
        self.content_set: str | None = None
        self.body_in = False  # every byte of the body is written; the commit follows
        # Called when the fill throws away the bytes it wrote because they were damaged
        # (the origin's CRC-32 did not match): whoever kept a copy of them drops it too.
        self.on_damaged: Callable[[], None] | None = None
        self._changed = asyncio.Event()  # set (and replaced) on every change, chunks too
        self._body_or_end = asyncio.Event()  # set once the body is in, or the fill ended
        self._ended = asyncio.Event()  # set once the fill ended

    @classmethod
    def not_found(cls, key: str) -> Fill:
        """A finished fill answering 404 (from the negative cache)."""
        fill = cls(key)
        fill.error = FillFailedError(f"{key}: not at the origin (remembered 404)", not_found=True)
        fill.end()
        return fill

    @property
    def written(self) -> int:
        return self.writer.written if self.writer is not None else 0

    @property
    def readable(self) -> int:
        """Bytes readers may send: all written ones, except that a body to be checked
        against the origin's CRC-32 keeps its last byte until it passed."""
        writer = self.writer
        if writer is None:
            return 0
        written = writer.written
        if (
            written
            and written == writer.info.size
            and writer.crc32_expected is not None
            and not self.body_in
        ):
            return written - 1
        return written

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def end(self) -> None:
        """Mark the fill ended (its ``entry`` or ``error`` is set) and wake every waiter."""
        self.done = True
        self._body_or_end.set()
        self._ended.set()
        self._notify()

    async def wait_body(self) -> None:
        """Until the whole body is written (:attr:`body_in`) or the fill ended; unlike
        :meth:`wait_bytes`, a waiter here is not woken for every chunk."""
        await self._body_or_end.wait()

    async def wait_done(self) -> None:
        """Until the fill ended (committed, failed or not found)."""
        await self._ended.wait()

    async def wait_info(self) -> tuple[ObjectInfo, Writer, int]:
        """Wait until headers arrived; returns validators, the writer and the epoch."""
        while True:
            if self.error is not None:
                raise self.error
            if self.info is not None and self.writer is not None:
                return self.info, self.writer, self.epoch
            if self.done:
                raise FillFailedError(f"{self.key}: fill ended without data")
            await self._changed.wait()

    async def wait_bytes(self, offset: int, epoch: int) -> int:
        """Wait until bytes beyond ``offset`` are written; returns the written length.

        Raises :class:`FillFailedError` when the fill failed or restarted from zero.
        """
        while True:
            if self.epoch != epoch:
                raise FillFailedError(f"{self.key}: the object changed at the origin mid-fill")
            if self.readable > offset:
                return self.readable
            if self.error is not None:
                raise self.error
            if self.done:
                return self.readable
            await self._changed.wait()


class Loader:
    def __init__(
        self,
        store: Store,
        upstreams: Sequence[Upstream],
        retry: RetryPolicy,
        *,
        on_origin_request: Callable[[str, float], None] | None = None,
        on_fill_done: Callable[[str, int], None] | None = None,
        on_upstream_failure: Callable[[str, str], None] | None = None,
        not_found_ttl: Callable[[], float] = lambda: 0.0,
        on_negative_hit: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.upstreams = list(upstreams)
        self.retry = retry
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_origin_request = on_origin_request
        self._on_fill_done = on_fill_done
        self._on_upstream_failure = on_upstream_failure or (lambda source, cause: None)
        self.fills_started = 0
        self.negative = NegativeCache()
        self._not_found_ttl = not_found_ttl
        self._on_negative_hit = on_negative_hit or (lambda: None)

    async def lookup(
        self,
        key: str,
        before: Sequence[Upstream] | Callable[[], Sequence[Upstream]] = (),
        *,
        respect_negative: bool = False,
        piece_size: int | None = None,
        pinned: bool = False,
        content_set: str | None = None,
    ) -> Entry | Fill:
        """A verified committed entry, or the (possibly new) fill for ``key``.

        ``before`` are upstreams to try ahead of the configured ones (the key's
        owner peer, parent and sibling sites) when this call starts the fill; a
        callable is asked only then (ranking members costs time a hit need not pay).
        With ``respect_negative`` a key the origin recently answered 404 for gives
        a finished, not-found :class:`Fill` without asking anyone.

        Pre-positioning passes its ContentSet's ``piece_size`` (used only when this
        call starts the fill: a fill a client miss started keeps the store's piece
        size) and the placement (``pinned``, ``content_set``) the commit records in
        the object's meta document (also when joining a fill still running).
        """
        entry = self.store.get(key)
        if entry is not None and (entry.verified or await self.store.verify(entry)):
            return entry
        if respect_negative and self.negative.holds(key, time.monotonic()):
            self._on_negative_hit()
            return Fill.not_found(key)
        fill = self._fills.get(key)
        if fill is None:
            fill = Fill(key)
            fill.piece_size = piece_size
            self._fills[key] = fill
            self.fills_started += 1
            chain = [*(before() if callable(before) else before), *self.upstreams]
            task = asyncio.create_task(self._run(fill, chain), name=f"fill:{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if content_set is not None or pinned:
            fill.pinned, fill.content_set = pinned, content_set
        return fill

    def in_progress(self) -> int:
        return len(self._fills)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, fill: Fill, chain: Sequence[Upstream]) -> None:
        try:
            async with asyncio.timeout(self.retry.total_deadline):
                await self._fetch(fill, chain)
        except FillFailedError as exc:
            fill.error = exc
        except TimeoutError:
            fill.error = FillFailedError(
                f"{fill.key}: fill exceeded the total deadline of {self.retry.total_deadline}s"
            )
        except asyncio.CancelledError:
            fill.error = FillFailedError(f"{fill.key}: fill cancelled (shutting down)")
            raise
        except Exception as exc:  # a bug or a disk error: fail the readers, keep serving
            log.exception("fill_crashed", key=fill.key)
            fill.error = FillFailedError(f"{fill.key}: fill failed: {exc}")
        finally:
            if fill.error is not None and fill.writer is not None:
                fill.writer.abort()
            if self._on_fill_done is not None:
                if fill.entry is not None:
                    self._on_fill_done("committed", fill.entry.size)
                elif fill.error is not None and fill.error.not_found:
                    self._on_fill_done("not_found", 0)
                else:
                    self._on_fill_done("failed", 0)
            if fill.entry is not None:
                self.negative.discard(fill.key)
            elif fill.error is not None and fill.error.not_found:
                self.negative.add(fill.key, time.monotonic(), self._not_found_ttl())
            self._fills.pop(fill.key, None)
            fill.end()

    async def _open(
        self, fill: Fill, chain: Sequence[Upstream], start: int, if_match: str | None
    ) -> tuple[Upstream, Opened]:
        errors: list[str] = []
        for upstream in chain:
            began = time.monotonic()
            try:
                opened = await upstream.open(fill.key, start, if_match)
            except NotFoundError as exc:
                self._on_upstream_failure(upstream.source, "content_miss")
                if upstream.source == "origin":
                    raise
                errors.append(str(exc))
                continue
            except ChangedError:
                raise
            except UpstreamError as exc:
                # Open Connect's "health miss": the source exists but could not serve.
                self._on_upstream_failure(upstream.source, "health_miss")
                errors.append(str(exc))
                continue
            finally:
                if upstream.source == "origin" and self._on_origin_request is not None:
                    self._on_origin_request(fill.key, time.monotonic() - began)
            return upstream, opened
        raise UpstreamError("; ".join(errors) or "no upstream configured")

    async def _fetch(self, fill: Fill, chain: Sequence[Upstream]) -> None:
        attempt = 0
        while True:
            start = fill.written
            if_match = fill.info.etag if (fill.info is not None and start) else None
            try:
                upstream, opened = await self._open(fill, chain, start, if_match)
            except NotFoundError as exc:
                raise FillFailedError(str(exc), not_found=True) from exc
            except ChangedError:
                self._restart(fill)
                attempt += 1
                if attempt >= self.retry.max_attempts:
                    raise FillFailedError(f"{fill.key}: kept changing at the origin") from None
                continue
            except UpstreamError as exc:
                attempt += 1
                if attempt >= self.retry.max_attempts:
                    raise FillFailedError(f"{fill.key}: {exc}") from exc
                log.warning("fill_retry", key=fill.key, attempt=attempt, error=str(exc))
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            try:
                if fill.info is None or fill.writer is None:
                    fill.info = opened.info
                    fill.source = upstream.source
                    fill.writer = self.store.begin(opened.info, fill.piece_size, pinned=fill.pinned)
                    fill._notify()
                elif opened.info.size != fill.info.size or opened.info.etag != fill.info.etag:
                    # A source that ignored If-Match: treat as a change.
                    self._restart(fill, opened.info)
                    continue
                writer = fill.writer
                if writer.written == 0:
                    writer.expect_crc32(opened.crc32)
                async for chunk in opened.body.chunks():
                    writer.write(chunk)
                    fill._notify()
                if writer.written != writer.info.size:
                    raise UpstreamError(
                        f"{fill.key}: body ended at {writer.written} of {writer.info.size} bytes"
                    )
                mismatch = writer.checksum_mismatch()
                if mismatch is not None:
                    raise ChecksumMismatchError(mismatch)
                fill.body_in = True
                fill._body_or_end.set()
                fill._notify()  # readers may take the last byte now
            except ChecksumMismatchError as exc:
                self._on_upstream_failure(upstream.source, "checksum_mismatch")
                log.warning("fill_checksum_mismatch", key=fill.key, error=str(exc))
                self._restart(fill, reason="body damaged")  # none of it can be trusted
                if fill.on_damaged is not None:
                    fill.on_damaged()
                attempt += 1
                if attempt >= self.retry.max_attempts:
                    raise FillFailedError(f"{fill.key}: {exc}") from exc
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            except UpstreamError as exc:
                attempt += 1
                if attempt >= self.retry.max_attempts:
                    raise FillFailedError(f"{fill.key}: {exc}") from exc
                log.warning(
                    "fill_resume",
                    key=fill.key,
                    attempt=attempt,
                    held_bytes=fill.written,
                    error=str(exc),
                )
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            finally:
                await opened.body.release()
            break
        assert fill.writer is not None
        fill.entry = await fill.writer.commit(pinned=fill.pinned, content_set=fill.content_set)
        log.info(
            "fill_committed",
            key=fill.key,
            source=fill.source,
            bytes=fill.entry.size,
            pieces=len(fill.entry.meta.piece_hashes),
        )

    def _restart(
        self, fill: Fill, info: ObjectInfo | None = None, *, reason: str = "etag changed"
    ) -> None:
        """Drop what we hold (the object changed, or arrived damaged); readers of the
        old bytes abort."""
        log.warning("fill_restart", key=fill.key, reason=reason)
        if fill.writer is not None:
            if info is None:
                fill.writer.abort()
                fill.writer = None
                fill.info = None
            else:
                self.store.resize(fill.writer, info)
                fill.info = info
        fill.epoch += 1
        fill._notify()
