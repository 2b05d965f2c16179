"""The pre-positioning loop of one node: resolve, own, pin, fill, report.

Every step (each ``tick`` seconds) reads the node's *current* configuration -
the config watcher swaps it when the operator re-renders the ConfigMap - and:

1. resolves each fill-plan entry's catalogue (cached per entry, generation and
   source; refreshed every ``refresh`` seconds and after an invalidation);
2. keeps the keys this node owns (:mod:`.plan`) in fill order;
3. applies invalidations once per id (the objects are removed; owned ones are
   then refetched by the normal fill);
4. reconciles pins: owned keys that are stored are pinned to their
   ContentSet; anything pinned that is no longer owned or planned is unpinned
   (evictable, not deleted);
5. when the window is open (or ``allowOutsideWindow``) and the budget admits
   the next object, starts fills up to ``fill.concurrency``.

A fill slot that frees (a body is in) starts the next fill at once, without
waiting for a step, from where the last look stopped (:meth:`Prepositioner._dispatch`);
a committed fill counts in the progress at once. So a step's cost (it looks at
every planned key) is paid once per tick, not once per object.

A window that closes stops new fills; running ones finish (their bytes still
go through the rate cap). Fills go through the node's own :class:`Loader`, so
commits, piece hashes and the ``Range`` + ``If-Match`` resume are the miss
path's, and a client miss and a pre-positioning fill of the same key share
one fetch (single-flight): whichever comes first starts it, the other joins
it, and the origin is asked once. The chain of a fill started here is the
old owners (peer fill, see :mod:`.sources`), then the origin, both metered
(rate cap, budget, durable partial); the loader appends the node's own
upstreams as the last resort. A client that joins a pre-positioning fill
reads it cut-through at the fill's pace (the rate cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from cache_node.appkeys import NODE
from cache_node.config import NodeConfig
from cache_node.loader import Fill, FillFailedError
from cache_node.node import Node
from cache_node.origin import S3Origin
from cache_node.prepos import window as windows
from cache_node.prepos.catalogue import CatalogueError, Item, resolve
from cache_node.prepos.metrics import PreposMetrics
from cache_node.prepos.partial import Partials
from cache_node.prepos.plan import Task, holders, ordered, owned
from cache_node.prepos.sources import HolderPeer, Metered, PartialTracker
from cache_node.prepos.throttle import TokenBucket, WindowBudget
from cache_node.store import Entry, Writer
from cache_node.upstream import Upstream, UpstreamError

log = structlog.get_logger("cache_node.prepos")

Clock = Callable[[], datetime]
FAILURE_BACKOFF_SECONDS = 30.0
RESOLVE_BACKOFF_SECONDS = 30.0
# The state document changes with every chunk (the window budget); it is saved at
# most this often while filling, and at close. A crash forgets at most this much
# of the budget's use.
STATE_SAVE_SECONDS = 2.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Progress:
    objects_total: int = 0
    bytes_total: int = 0
    objects_stored: int = 0
    bytes_stored: int = 0

    def as_status(self) -> dict[str, int]:
        return {
            "objectsTotal": self.objects_total,
            "bytesTotal": self.bytes_total,
            "objectsPending": self.objects_total - self.objects_stored,
            "bytesPending": max(0, self.bytes_total - self.bytes_stored),
            "objectsStored": self.objects_stored,
            "bytesStored": self.bytes_stored,
        }


@dataclass
class _Catalogue:
    signature: tuple[object, ...]
    items: list[Item] | None = None
    error: str | None = None
    resolved_at: float = 0.0


@dataclass
class State:
    """What must survive a restart: invalidations done, budget used per window, and the
    membership the node last filled under (so old owners are still asked after a restart)."""

    invalidations: set[str] = field(default_factory=set)
    budget_used: dict[str, int] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            doc = json.loads(path.read_bytes())
            return cls(
                invalidations={str(i) for i in doc.get("invalidations", [])},
                budget_used={str(k): int(v) for k, v in doc.get("budgetUsed", {}).items()},
                members=[str(m) for m in doc.get("members", [])],
            )
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("prepos_state_unreadable", path=str(path), error=str(exc))
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A unique temp name: a save still running in a worker thread (its step was
        # cancelled at shutdown) must not race the final save on the same file.
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
        doc = {
            "invalidations": sorted(self.invalidations),
            "budgetUsed": self.budget_used,
            "members": self.members,
        }
        with open(tmp, "wb") as fh:  # noqa: PTH123 - need the descriptor for fsync
            fh.write(json.dumps(doc, sort_keys=True).encode())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)


class Prepositioner:
    def __init__(
        self,
        node: Node,
        *,
        clock: Clock = utc_now,
        tick: float = 1.0,
        refresh: float = 300.0,
    ) -> None:
        if node.store is None:
            raise RuntimeError("the node's store must exist before pre-positioning starts")
        self.node = node
        self.store = node.store
        self.clock = clock
        self.tick = tick
        self.refresh = refresh
        cfg = node.config
        root = Path(cfg.store.path) / "prepos"
        self.partials = Partials(root / "partial")
        self._state_path = root / "state.json"
        self.state = State.load(self._state_path)
        self.bucket = TokenBucket(cfg.fill.rate_limit_bytes_per_second)
        self.budget = WindowBudget(cfg.fill.budget_bytes_per_window, self.state.budget_used)
        self._origins: dict[str, S3Origin] = {}
        self._own_origins: list[S3Origin] = []
        self._origins_lock = asyncio.Lock()
        self._catalogues: dict[str, _Catalogue] = {}
        self._members: list[str] = [m.name for m in cfg.peering.members]
        self._previous: list[str] = list(self.state.members or self._members)
        self._tasks: list[Task] = []
        self._cursor = 0  # tasks before it were settled when last looked at (_dispatch)
        self._counted: set[str] = set()  # keys counted stored in self.progress
        self._tasks_signature: tuple[object, ...] = ()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._running_bytes = 0
        self._unplaced: list[Task] = []
        self._busy: set[str] = set()  # keys holding one of the fill.concurrency slots
        self._failed_until: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._state_dirty = False
        self._state_saved = 0.0
        self._swept = False
        self.progress: dict[str, Progress] = {}
        self.window_open = False
        self.window_id: str | None = None
        self.budget_exhausted = False
        self._window_key = ""
        self._closed = False
        self.metrics = PreposMetrics(node.metrics.registry, self)  # last: it reads the above

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="prepos")

    async def close(self) -> None:
        """Stop stepping and waiting; called at node shutdown, before the node's loader closes.

        Fills run in the node's loader (shared with client misses), so one already
        started goes on until it ends or that loader closes right after this; a fill
        from a bucket other than the node's own loses its S3 client here and fails.
        """
        if self._closed:
            return
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._running.values()):
            task.cancel()
        for task in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for origin in self._own_origins:
            await origin.close()
        self._own_origins.clear()
        self._origins.clear()
        if self._state_dirty:
            self.state.save(self._state_path)
        self.metrics.unregister()

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep filling after a bug in one step; it is logged
                log.exception("prepos_step_failed")
            await asyncio.sleep(self.tick)

    # --- one step ---------------------------------------------------------------------------

    async def step(self) -> None:
        node = self.node
        if not node.ready:
            return
        cfg = node.config
        self.bucket.set_rate(cfg.fill.rate_limit_bytes_per_second)
        self.budget.limit = cfg.fill.budget_bytes_per_window
        members = [m.name for m in cfg.peering.members]
        if members != self._members:
            log.info("prepos_members_changed", before=self._members, after=members)
            self._previous, self._members = self._members, members
        if self.state.members != members:
            self.state.members = list(members)
            self._state_dirty = True
        await self._resolve_all(cfg)
        await self._invalidate(cfg)
        tasks_changed = self._plan(cfg)
        if tasks_changed:
            await self._reconcile_pins()
            await asyncio.to_thread(self._sweep_partials)
        self._update_progress()
        for task in self._unplaced:
            if task.key not in self._running:
                await self.store.set_placement(
                    task.key, pinned=task.pinned, content_set=task.content_set
                )
        self._unplaced.clear()
        self._dispatch(cfg)
        mono = time.monotonic()
        if self._state_dirty and mono - self._state_saved >= STATE_SAVE_SECONDS:
            self.state.budget_used = dict(self.budget.used)
            self._state_dirty = False
            self._state_saved = mono
            await asyncio.to_thread(self.state.save, self._state_path)

    def _sweep_partials(self) -> None:
        """Drop partials nobody will resume: the key is stored, or no longer to be filled.

        A partial may share its inode with a committed object (a crash between the
        commit and the drop), which would keep its disk space after an eviction.
        """
        if not self._swept:
            self.partials.sweep_temporaries()
            self._swept = True
        wanted = {task.key for task in self._tasks}
        for key in self.partials.held_keys():
            if key in self._running:
                continue
            if key not in wanted or self.store.peek(key) is not None:
                self.partials.drop(key)

    async def _started_origin(self, bucket: str) -> S3Origin:
        """The S3 client for ``bucket``: the node's own for its origin bucket, else ours."""
        async with self._origins_lock:
            origin = self._origins.get(bucket)
            if origin is not None:
                return origin
            loader = self.node.loader
            shared = [
                u
                for u in (loader.upstreams if loader is not None else [])
                if isinstance(u, S3Origin) and u.config.bucket == bucket
            ]
            if shared:
                origin = shared[0]  # started and closed by the node's resources
            else:
                origin = S3Origin(self.node.config.origin.model_copy(update={"bucket": bucket}))
                await origin.start()
                self._own_origins.append(origin)
            self._origins[bucket] = origin
            return origin

    async def _resolve_all(self, cfg: NodeConfig) -> None:
        now = time.monotonic()
        names = {entry.name for entry in cfg.fill_plan}
        for gone in set(self._catalogues) - names:
            del self._catalogues[gone]
        for entry in cfg.fill_plan:
            signature = (entry.generation, entry.source)
            cat = self._catalogues.get(entry.name)
            if cat is not None and cat.signature == signature:
                age = now - cat.resolved_at
                if cat.items is not None and age < self.refresh:
                    continue
                if cat.items is None and age < RESOLVE_BACKOFF_SECONDS:
                    continue
            fresh = _Catalogue(signature=signature, resolved_at=now)
            try:
                origin = await self._started_origin(entry.source.bucket)
                fresh.items = await resolve(entry.source, origin)
            except (CatalogueError, UpstreamError) as exc:
                fresh.error = str(exc)
                if cat is not None and cat.signature == signature:
                    fresh.items = cat.items  # keep filling from the last good catalogue
                self.metrics.catalogue_errors.inc()
                log.error("prepos_catalogue_failed", content_set=entry.name, error=str(exc))
            else:
                log.info("prepos_catalogue", content_set=entry.name, objects=len(fresh.items))
            self._catalogues[entry.name] = fresh

    async def _invalidate(self, cfg: NodeConfig) -> None:
        for entry in cfg.fill_plan:
            for inv in entry.invalidations:
                ident = f"{entry.name}/{inv.id}"
                if ident in self.state.invalidations:
                    continue
                removed = 0
                for key in list(self.store):
                    if (inv.key is not None and key == inv.key.lstrip("/")) or (
                        inv.prefix is not None and key.startswith(inv.prefix.lstrip("/"))
                    ):
                        if key in self._running:
                            continue  # being fetched now: that copy is current
                        self.store.remove(key, reason="invalidated")
                        self.partials.drop(key)
                        removed += 1
                self.state.invalidations.add(ident)
                self._state_dirty = True
                self.metrics.invalidations.inc()
                cat = self._catalogues.get(entry.name)
                if cat is not None:
                    cat.resolved_at = 0.0  # sizes may have changed: re-resolve next step
                self._tasks_signature = ()
                log.info(
                    "prepos_invalidated",
                    content_set=entry.name,
                    id=inv.id,
                    key=inv.key,
                    prefix=inv.prefix,
                    removed=removed,
                )

    def _plan(self, cfg: NodeConfig) -> bool:
        signature: tuple[object, ...] = (
            tuple(self._members),
            tuple(
                (e.name, e.priority, e.copies, e.pinned, id(self._catalogues.get(e.name)))
                for e in cfg.fill_plan
            ),
        )
        if signature == self._tasks_signature:
            return False
        tasks: dict[str, Task] = {}
        for entry in cfg.fill_plan:
            cat = self._catalogues.get(entry.name)
            if cat is None or cat.items is None:
                continue
            for item in owned(cat.items, self._members, self.node.name, entry.copies):
                task = Task(
                    content_set=entry.name,
                    priority=entry.priority,
                    item=item,
                    pinned=entry.pinned,
                    copies=entry.copies,
                    bucket=entry.source.bucket,
                    piece_size=entry.piece_size_bytes,
                )
                held = tasks.get(item.key)
                if held is None or task.order() < held.order():
                    tasks[item.key] = task
        self._tasks = ordered(tasks.values())
        self._cursor = 0
        self._tasks_signature = signature
        return True

    async def _reconcile_pins(self) -> None:
        wanted = {task.key: task for task in self._tasks}
        unpinned = 0
        for entry in self.store.entries():
            task = wanted.get(entry.key)
            if task is not None:
                if entry.size == task.item.size:
                    await self.store.set_placement(
                        entry.key, pinned=task.pinned, content_set=task.content_set
                    )
            elif entry.meta.pinned or entry.meta.content_set is not None:
                await self.store.set_placement(entry.key, pinned=False, content_set=None)
                unpinned += 1
        if unpinned:
            self.metrics.unpinned.inc(unpinned)
            log.info("prepos_unpinned", objects=unpinned)

    def _stored(self, task: Task) -> Entry | None:
        entry = self.store.peek(task.key)
        if entry is None or entry.size != task.item.size:
            return None
        return entry

    def _update_progress(self) -> None:
        progress: dict[str, Progress] = {}
        counted: set[str] = set()
        for entry in self.node.config.fill_plan:
            cat = self._catalogues.get(entry.name)
            if cat is not None and cat.items is not None:
                progress[entry.name] = Progress()
        for task in self._tasks:
            p = progress.get(task.content_set)
            if p is None:
                continue
            p.objects_total += 1
            p.bytes_total += task.item.size
            stored = self._stored(task)
            if stored is not None:
                p.objects_stored += 1
                p.bytes_stored += task.item.size
                counted.add(task.key)
                meta = stored.meta
                if (meta.pinned, meta.content_set) != (task.pinned, task.content_set):
                    # Committed by a client miss (dynamic) before pre-positioning got to it.
                    self._unplaced.append(task)
        self.progress = progress
        self._counted = counted

    def _count_stored(self, task: Task) -> None:
        """Count a fill that just committed, before the next step recounts everything."""
        p = self.progress.get(task.content_set)
        if p is None or task.key in self._counted:
            return
        self._counted.add(task.key)
        p.objects_stored += 1
        p.bytes_stored += task.item.size

    def _dispatch(self, cfg: NodeConfig, *, rescan: bool = True) -> None:
        """Start fills, in fill order, up to ``fill.concurrency``.

        A step rescans from the first task. A freed slot (``rescan=False``) goes on
        from :attr:`_cursor`: every task before it was stored, running, backing off
        or started when last looked at; one that changed since (evicted, backoff
        over, failed) waits for the next step's rescan.
        """
        now = self.clock()
        interval = windows.current(cfg.fill.window, now)
        self.window_open = interval is not None or cfg.fill.allow_outside_window
        self.window_id = interval.id if interval is not None else None
        if not self.window_open:
            return
        window_id = self.window_id or f"outside-{now.date().isoformat()}"
        self._window_key = window_id
        self.budget_exhausted = False
        mono = time.monotonic()
        tasks = self._tasks
        index = 0 if rescan else min(self._cursor, len(tasks))
        while index < len(tasks) and len(self._busy) < cfg.fill.concurrency:
            task = tasks[index]
            if not (
                task.key in self._running
                or self._stored(task) is not None
                or self._failed_until.get(task.key, 0.0) > mono
            ):
                if not self.budget.admits(window_id, task.item.size + self._running_bytes):
                    self.budget_exhausted = True
                    break
                self._running_bytes += task.item.size
                self._busy.add(task.key)
                self._running[task.key] = asyncio.create_task(
                    self._fill(task, cfg), name=f"prepos:{task.key}"
                )
            index += 1
            self._cursor = index

    # --- one fill ---------------------------------------------------------------------------

    def _chain(
        self, task: Task, cfg: NodeConfig, origin: S3Origin, tracker: PartialTracker
    ) -> list[Upstream]:
        streamed = {source: self.metrics.streamed.labels(source) for source in ("peer", "origin")}

        def on_bytes(source: str, size: int) -> None:
            self.budget.charge(self._window_key, size)
            self._state_dirty = True
            counter = streamed.get(source)
            if counter is None:
                counter = streamed[source] = self.metrics.streamed.labels(source)
            counter.inc(size)

        def meter(upstream: Upstream) -> Upstream:
            return Metered(upstream, self.bucket, self.partials, tracker, on_bytes)

        chain: list[Upstream] = []
        peering = self.node.peering
        if peering is not None and peering.session is not None and peering.secret is not None:
            urls = {m.name: m.peer_url for m in cfg.peering.members}
            for name in holders(
                task.key, self.node.name, self._members, self._previous, task.copies
            ):
                if name in urls:
                    peer = HolderPeer(name, urls[name], peering.session, peering.secret, peering.me)
                    chain.append(meter(peer))
        chain.append(meter(origin))
        return chain

    async def _fill(self, task: Task, cfg: NodeConfig) -> None:
        source = "local"
        tracker: PartialTracker | None = None
        try:
            loader = self.node.loader
            if loader is None:
                raise UpstreamError("the node's loader is not running")
            origin = await self._started_origin(task.bucket)
            started: list[Fill] = []

            def writer() -> Writer | None:
                return started[0].writer if started else None

            tracker = PartialTracker(self.partials, writer)
            found = await loader.lookup(
                task.key,
                before=self._chain(task, cfg, origin, tracker),
                piece_size=task.piece_size,
                pinned=task.pinned,
                content_set=task.content_set,
            )
            if isinstance(found, Fill):
                # Set before the fill's task first runs: lookup does not yield after
                # creating it. A fill a client miss started never uses this chain.
                started.append(found)
                # A body that failed the origin's checksum is fetched again whole: its
                # partial (journaled hashes of damaged bytes) must not be resumed from.
                found.on_damaged = functools.partial(self.partials.drop, task.key)
                # The stream ends when the last byte is written: free the fill slot
                # then, so the next stream overlaps this one's commit (its fsyncs).
                entry = await _wait(found, on_body=lambda: self._release(task))
                source = found.source or "origin"
            else:
                entry = found
            self._release(task)  # a hit or a joined fill: nothing streams any more
            if entry.size == task.item.size:
                self._count_stored(task)
            else:
                log.warning(
                    "prepos_size_mismatch",
                    key=task.key,
                    catalogue=task.item.size,
                    origin=entry.size,
                )
                cat = self._catalogues.get(task.content_set)
                if cat is not None:
                    cat.resolved_at = 0.0
            # A fill this lookup started or joined committed with the placement already
            # (one meta write): this is then a no-op. A hit, or a commit that won the
            # race against the join, is placed here.
            await self.store.set_placement(
                task.key, pinned=task.pinned, content_set=task.content_set
            )
            self.partials.drop(task.key)
            self.metrics.filled.labels(source).inc()
        except FillFailedError as exc:
            self._failed_until[task.key] = time.monotonic() + FAILURE_BACKOFF_SECONDS
            self.metrics.filled.labels("failed").inc()
            log.warning("prepos_fill_failed", key=task.key, error=str(exc))
        except (UpstreamError, OSError) as exc:
            self._failed_until[task.key] = time.monotonic() + FAILURE_BACKOFF_SECONDS
            self.metrics.filled.labels("failed").inc()
            log.warning("prepos_fill_failed", key=task.key, error=str(exc))
        finally:
            if tracker is not None:
                tracker.close()
            self._release(task)
            self._running.pop(task.key, None)

    def _release(self, task: Task) -> None:
        """Free ``task``'s fill slot and start the next fill in it (no step needed)."""
        if task.key in self._busy:
            self._busy.discard(task.key)
            self._running_bytes -= task.item.size
            if not self._closed:
                self._dispatch(self.node.config, rescan=False)

    # --- reporting --------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Pre-positioning fills in progress."""
        return len(self._running)

    def report(self) -> dict[str, Any]:
        """Per-entry progress for ``/status`` (the fields the operator aggregates)."""
        entries: dict[str, dict[str, Any]] = {}
        for entry in self.node.config.fill_plan:
            cat = self._catalogues.get(entry.name)
            doc: dict[str, Any] = {}
            progress = self.progress.get(entry.name)
            if progress is not None:
                doc.update(progress.as_status())
            if cat is not None and cat.error is not None:
                doc["error"] = cat.error
            entries[entry.name] = doc
        cfg = self.node.config
        left = self.budget.remaining(self.window_id) if self.window_id else None
        return {
            "entries": entries,
            "fill": {
                "windowOpen": self.window_open,
                "nextWindowStart": windows.next_open(cfg.fill.window, self.clock()).isoformat(),
                "rateLimitBytesPerSecond": cfg.fill.rate_limit_bytes_per_second,
                "budgetRemainingBytes": left,
                "budgetExhausted": self.budget_exhausted,
                "inProgress": len(self._running),
            },
        }


async def _wait(fill: Fill, on_body: Callable[[], None] | None = None) -> Entry:
    """Wait for a loader fill to finish; its committed entry or its error.

    ``on_body`` runs once, when the whole body is written (the commit follows).
    Neither wait wakes for each chunk: a pre-positioning fill has nobody reading it.
    """
    await fill.wait_body()
    if on_body is not None and fill.body_in:
        on_body()
    await fill.wait_done()
    if fill.entry is None:
        raise fill.error or FillFailedError(f"{fill.key}: fill ended without an object")
    return fill.entry


def extension(*, clock: Clock = utc_now, tick: float = 1.0) -> Callable[..., None]:
    """An app extension (``create_apps(extensions=...)``) running pre-positioning.

    Its cleanup context is appended after the node's resources, so it starts
    once the store, loader and peering exist and stops before they close.
    """

    def install(app: web.Application, config: NodeConfig) -> None:
        async def prepos_ctx(app: web.Application) -> AsyncIterator[None]:
            node = app[NODE]
            prepos = Prepositioner(node, clock=clock, tick=tick)
            node.fill_report = prepos.report
            prepos.start()
            try:
                yield
            finally:
                node.fill_report = None
                await prepos.close()

        app.cleanup_ctx.append(prepos_ctx)

    return install


install = extension()
