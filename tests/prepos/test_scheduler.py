"""Pre-positioning inside one live node, stepped by hand with an injected clock.

The node's resources (store, loader, peering) run for real through the app's
cleanup context; the origin is the S3 test server behind the counting proxy.
The test drives :meth:`Prepositioner.step` itself, so window, budget, pins,
invalidations and resumes are checked step by step, not by waiting for time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cache_node.app import create_apps
from cache_node.config import NodeConfig
from cache_node.node import Node
from cache_node.ops import status_document
from cache_node.prepos.partial import Partials
from cache_node.prepos.scheduler import Prepositioner
from cache_node.store import ObjectInfo, ObjectMeta, Store
from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.origin_proxy import OriginProxy
from edgefill_devenv.s3 import S3Server

from .conftest import PIECE, KiB, s3_client, seed

pytestmark = pytest.mark.integration

SET = "media/set"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _config(
    store: Path, endpoint: str, bucket: str, fill: dict[str, Any], **entry: Any
) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "site": {"namespace": "edge", "name": "one"},
            "listen": {"host": "127.0.0.1"},
            "store": {"path": str(store), "maxBytes": 64 * 1024 * KiB, "pieceSizeBytes": PIECE},
            "origin": {
                "endpointUrl": endpoint,
                "bucket": bucket,
                "connectTimeoutSeconds": 2,
                "readTimeoutSeconds": 5,
                "totalDeadlineSeconds": 30,
            },
            "fill": fill,
            "fillPlan": [
                {
                    "name": SET,
                    "generation": 1,
                    "source": {"bucket": bucket, "prefixes": ["set/"]},
                    "pieceSizeBytes": PIECE,
                    **entry,
                }
            ],
            "tokens": {"enabled": False},
            "tracker": {"enabled": False},
        }
    )


@asynccontextmanager
async def running_node(config: NodeConfig) -> AsyncIterator[tuple[Node, str]]:
    apps = create_apps(config, "cache-0")
    runner = web.AppRunner(apps.client, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        for _ in range(500):
            if apps.node.ready:
                break
            await asyncio.sleep(0.01)
        assert apps.node.ready
        yield apps.node, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def settle(prepos: Prepositioner, steps: int = 2000) -> None:
    """Step until no fill runs and a step starts none (bounded by steps, not by time)."""
    for _ in range(steps):
        await prepos.step()
        if not prepos.active:
            await prepos.step()
            if not prepos.active:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("pre-positioning never settled")


async def _fill_alone(cfg: NodeConfig, key: str) -> tuple[bytes, bool]:
    """Run one node's pre-positioning until it settles; ``key``'s stored bytes and
    whether it is pinned."""
    async with running_node(cfg) as (node, _):
        prepos = Prepositioner(node, clock=Clock(datetime(2026, 1, 15, tzinfo=UTC)))
        try:
            await settle(prepos)
        finally:
            await prepos.close()
        assert node.store is not None
        entry = node.store.peek(key)
        assert entry is not None
        return entry.data_path.read_bytes(), entry.meta.pinned


def _entry(node: Node) -> dict[str, Any]:
    doc = status_document(node)
    entries = {e["name"]: e for e in doc["fillPlan"]}
    result: dict[str, Any] = entries[SET]
    return result


SIZES = {f"set/obj-{i:02d}.bin": 8 * KiB + i * 1000 for i in range(12)}
TOTAL = sum(SIZES.values())


@pytest.fixture
async def origin(s3_server: S3Server) -> AsyncIterator[tuple[OriginProxy, str]]:
    bucket = seed(s3_server, SIZES)
    async with OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket) as proxy:
        yield proxy, bucket


def _object_gets(proxy: OriginProxy) -> int:
    return sum(proxy.object_gets(k) for k in SIZES)


WINDOW = {"start": "02:00", "durationSeconds": 3600, "timeZone": "Europe/Berlin"}


async def test_closed_window_defers_and_opening_it_fills(
    origin: tuple[OriginProxy, str], tmp_path: Path
) -> None:
    proxy, bucket = origin
    clock = Clock(datetime(2026, 1, 15, 0, 0, tzinfo=UTC))  # 01:00 in Berlin: closed
    cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, {"window": WINDOW})
    async with running_node(cfg) as (node, _):
        prepos = Prepositioner(node, clock=clock)
        node.fill_report = prepos.report
        try:
            for _ in range(5):
                await prepos.step()
            entry = _entry(node)
            # The catalogue is resolved (totals known), nothing is fetched.
            assert entry["objectsTotal"] == len(SIZES)
            assert entry["bytesTotal"] == TOTAL
            assert entry["objectsPending"] == len(SIZES)
            assert _object_gets(proxy) == 0
            fill = status_document(node)["fill"]
            assert fill["windowOpen"] is False
            assert fill["nextWindowStart"] == "2026-01-15T01:00:00+00:00"

            clock.now = datetime(2026, 1, 15, 1, 30, tzinfo=UTC)  # 02:30 in Berlin: open
            await settle(prepos)
            entry = _entry(node)
            assert entry["objectsPending"] == 0
            assert entry["bytesStored"] == TOTAL
            assert _object_gets(proxy) == len(SIZES)
            assert node.store is not None
            for key, size in SIZES.items():
                stored = node.store.peek(key)
                assert stored is not None
                assert stored.meta.pinned
                assert stored.meta.content_set == SET
                assert stored.data_path.read_bytes() == object_bytes(key, size)
        finally:
            await prepos.close()


async def test_budget_per_window_stops_the_fill_and_the_next_window_continues(
    origin: tuple[OriginProxy, str], tmp_path: Path
) -> None:
    proxy, bucket = origin
    clock = Clock(datetime(2026, 1, 15, 1, 30, tzinfo=UTC))
    budget = TOTAL * 6 // 10  # the rest (at most 40% plus one object) fits the next night
    fill = {"window": WINDOW, "budgetBytesPerWindow": budget, "concurrency": 3}
    cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, fill)
    async with running_node(cfg) as (node, _):
        prepos = Prepositioner(node, clock=clock)
        node.fill_report = prepos.report
        try:
            await settle(prepos)
            first = _entry(node)
            assert 0 < first["bytesStored"] <= budget
            assert first["objectsPending"] > 0
            assert status_document(node)["fill"]["budgetExhausted"] is True
            assert sum(proxy.body_bytes[k] for k in SIZES) <= budget
            clock.now += timedelta(days=1)  # the next night's window: a fresh budget
            await settle(prepos)
            assert _entry(node)["objectsPending"] == 0
        finally:
            await prepos.close()


async def test_unpin_on_plan_removal_and_invalidation_once_per_id(
    origin: tuple[OriginProxy, str], tmp_path: Path
) -> None:
    proxy, bucket = origin
    clock = Clock(datetime(2026, 1, 15, 1, 30, tzinfo=UTC))
    cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, {"allowOutsideWindow": True})
    async with running_node(cfg) as (node, _):
        store = node.store
        assert store is not None
        prepos = Prepositioner(node, clock=clock)
        try:
            await settle(prepos)
            assert store.stats.pinned_objects == len(SIZES)

            # Invalidate one key: refetched exactly once, also across further steps.
            key = "set/obj-03.bin"
            plan = node.config.fill_plan[0]
            inv = plan.model_validate(
                {
                    **plan.model_dump(by_alias=True),
                    "invalidations": [{"id": "fix-1", "key": key}],
                }
            )
            node.config = node.config.model_copy(update={"fill_plan": [inv]})
            new_bytes = b"replaced at the origin" * 100
            # Replace it straight at the S3 server (not through the counting proxy).
            s3_client(proxy.upstream).put_object(Bucket=bucket, Key=key, Body=new_bytes)
            await settle(prepos)
            for _ in range(3):
                await prepos.step()
            assert proxy.object_gets(key) == 2
            assert _object_gets(proxy) == len(SIZES) + 1
            entry = store.peek(key)
            assert entry is not None
            assert entry.data_path.read_bytes() == new_bytes
            assert entry.meta.pinned

            # A restart remembers the invalidation: no second refetch.
            await prepos.close()
            prepos = Prepositioner(node, clock=clock)
            await settle(prepos)
            assert proxy.object_gets(key) == 2

            # The ContentSet leaves the plan: evictable, not deleted.
            node.config = node.config.model_copy(update={"fill_plan": []})
            await settle(prepos)
            assert store.stats.pinned_objects == 0
            assert store.stats.objects == len(SIZES)
        finally:
            await prepos.close()


@pytest.mark.parametrize("changed", [False, True], ids=["same-etag", "etag-changed"])
async def test_partial_from_an_earlier_run_resumes_or_refetches_whole(
    s3_server: S3Server, tmp_path: Path, changed: bool
) -> None:
    key, size = "set/big.bin", 100 * KiB
    bucket = seed(s3_server, {key: size})
    body = object_bytes(key, size)
    etag = s3_client(s3_server).head_object(Bucket=bucket, Key=key)["ETag"]
    store = tmp_path / "s"
    # What a killed run left: 2 complete pieces and part of the third.
    partials = Partials(store / "prepos" / "partial")
    info = ObjectInfo(
        key=key, size=size, etag='"stale"' if changed else etag, last_modified=time.time()
    )
    earlier = Store(store, 64 * 1024 * KiB, PIECE)
    earlier.recover(30.0)
    writer = earlier.begin(info)
    journal = await partials.track(writer)
    writer.write(body[: 2 * PIECE + 5000])
    journal.sync()
    writer.close_fd()  # killed here: the next start wipes the store's tmp/, not the partial
    async with OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket) as proxy:
        cfg = _config(store, proxy.endpoint_url, bucket, {"allowOutsideWindow": True})
        data, pinned = await _fill_alone(cfg, key)
        assert data == body
        assert pinned
        if changed:
            # Range + If-Match met a 412: the object was fetched whole, once more.
            assert proxy.object_gets(key) == 2
            assert proxy.range_gets[key] == 1
            # The whole object, plus the small XML error document of the 412.
            assert size <= proxy.body_bytes[key] < size + 1024
        else:
            # Only the bytes after the verified pieces crossed the network.
            assert proxy.object_gets(key) == 1
            assert proxy.range_gets[key] == 1
            assert proxy.body_bytes[key] == size - 2 * PIECE
    assert partials.held_keys() == []


async def test_rate_cap_holds_across_concurrent_streams(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """Bytes from the origin over a measured interval stay within 10% of the cap."""
    rate = 3 * 1024 * KiB
    sizes = {f"set/r-{i:02d}.bin": 128 * KiB for i in range(108)}  # 4.5 s at the cap
    bucket = seed(s3_server, sizes)
    async with OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket) as proxy:
        fill = {"allowOutsideWindow": True, "concurrency": 4, "rateLimitBytesPerSecond": rate}
        cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, fill)
        async with running_node(cfg) as (node, _):
            prepos = Prepositioner(node, tick=0.05)
            prepos.start()
            try:
                # Past the burst, and past the socket buffers of the streams filling up
                # (the origin side can run ahead of the node by those, once).
                for _ in range(2000):
                    if proxy.total_bytes() > rate:
                        break
                    await asyncio.sleep(0.01)
                # Two 1.5 s windows: neither may exceed the cap by more than 10% (the
                # behaviour under test). The fill must also be running near the cap, not
                # trivially under it; how near depends on the machine (a loaded CI machine
                # starves this one event loop for moments), so that bound is loose: half
                # the cap. Unloaded runs measure 0.92-0.99 of the cap.
                rates = []
                for _ in range(2):
                    t0, b0 = time.monotonic(), proxy.total_bytes()
                    await asyncio.sleep(1.5)
                    t1, b1 = time.monotonic(), proxy.total_bytes()
                    rates.append((b1 - b0) / (t1 - t0))
                print(f"origin bytes/s per window: {[round(r) for r in rates]}, cap {rate}")
                assert max(rates) <= 1.1 * rate, rates
                assert max(rates) >= 0.5 * rate, rates
                for _ in range(2000):
                    if prepos.progress.get(SET) and not (
                        prepos.progress[SET].objects_total - prepos.progress[SET].objects_stored
                    ):
                        break
                    await asyncio.sleep(0.01)
                assert proxy.total_bytes() == sum(sizes.values())
            finally:
                await prepos.close()


async def test_pinned_content_survives_dynamic_misses_and_a_miss_first_gets_pinned(
    s3_server: S3Server, tmp_path: Path
) -> None:
    dynamic = {f"other/d-{i:02d}.bin": 16 * KiB for i in range(12)}
    bucket = seed(s3_server, {**SIZES, **dynamic})
    async with OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket) as proxy:
        cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, {"allowOutsideWindow": True})
        budget = TOTAL + 48 * KiB  # room for all pinned content and three dynamic objects
        cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"max_bytes": budget})})
        async with running_node(cfg) as (node, client), aiohttp.ClientSession() as session:
            store = node.store
            assert store is not None
            first = "set/obj-00.bin"
            async with session.get(f"{client}/{first}") as resp:  # a client miss comes first
                assert resp.status == 200
                await resp.read()
            for _ in range(500):  # cut-through: the body may end before the commit
                entry = store.peek(first)
                if entry is not None:
                    break
                await asyncio.sleep(0.01)
            assert entry is not None
            assert not entry.meta.pinned
            prepos = Prepositioner(node, clock=Clock(datetime(2026, 1, 15, tzinfo=UTC)))
            try:
                await settle(prepos)
                assert proxy.object_gets(first) == 1  # pinned in place, not fetched again
                assert store.stats.pinned_objects == len(SIZES)
                for key in dynamic:
                    async with session.get(f"{client}/{key}") as resp:
                        assert resp.status == 200
                        await resp.read()
                assert store.stats.evictions["dynamic"] > 0
                assert store.stats.evictions["pinned"] == 0
                assert all(store.peek(key) is not None for key in SIZES)
            finally:
                await prepos.close()


@pytest.mark.parametrize("first", ["prefill", "client"])
async def test_a_client_miss_racing_a_prefill_of_the_same_key_costs_one_origin_get(
    origin: tuple[OriginProxy, str], tmp_path: Path, first: str
) -> None:
    """Pre-positioning and client misses share the node's loader: one fetch per key."""
    proxy, bucket = origin
    key = "set/obj-05.bin"
    proxy.stall(key, 1.0)  # the first GET holds its body back: the second one meets it
    fill = {"allowOutsideWindow": True, "concurrency": len(SIZES)}  # one step starts every key
    cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, fill)
    async with running_node(cfg) as (node, client), aiohttp.ClientSession() as session:
        prepos = Prepositioner(node, clock=Clock(datetime(2026, 1, 15, tzinfo=UTC)))

        async def client_get() -> bytes:
            async with session.get(f"{client}/{key}") as resp:
                assert resp.status == 200
                return await resp.read()

        async def origin_asked() -> None:
            for _ in range(500):
                if proxy.object_gets(key):
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"{key} never reached the origin")

        try:
            if first == "prefill":
                await prepos.step()
                await origin_asked()
                body = await client_get()
            else:
                request = asyncio.create_task(client_get())
                await origin_asked()
                await prepos.step()
                body = await request
            await settle(prepos)
            assert body == object_bytes(key, SIZES[key])
            assert proxy.object_gets(key) == 1
            assert _object_gets(proxy) == len(SIZES)
            assert node.store is not None
            entry = node.store.peek(key)
            assert entry is not None
            assert entry.meta.pinned
            assert entry.meta.content_set == SET
        finally:
            await prepos.close()


async def test_a_prefill_stores_the_content_sets_piece_size_and_placement_in_one_commit(
    origin: tuple[OriginProxy, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ContentSet's pieceSizeBytes reaches the store, and the commit records the pin."""
    proxy, bucket = origin
    fill = {"allowOutsideWindow": True, "concurrency": 3}
    cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, fill, pieceSizeBytes=2 * PIECE)
    async with running_node(cfg) as (node, _):
        store = node.store
        assert store is not None
        placed_before: list[tuple[bool, str | None]] = []
        set_placement = store.set_placement

        async def counting(key: str, *, pinned: bool, content_set: str | None) -> bool:
            entry = store.peek(key)
            assert entry is not None
            placed_before.append((entry.meta.pinned, entry.meta.content_set))
            return await set_placement(key, pinned=pinned, content_set=content_set)

        monkeypatch.setattr(store, "set_placement", counting)
        prepos = Prepositioner(node, clock=Clock(datetime(2026, 1, 15, tzinfo=UTC)))
        try:
            await settle(prepos)
        finally:
            await prepos.close()
        assert _object_gets(proxy) == len(SIZES)
        # Every placement call found the object already placed by its commit.
        assert placed_before
        assert set(placed_before) == {(True, SET)}
        for key, size in SIZES.items():
            entry = store.peek(key)
            assert entry is not None
            meta = ObjectMeta.from_json(entry.data_path.with_suffix(".meta").read_bytes())
            assert meta.piece_size == 2 * PIECE != store.piece_size
            assert len(meta.piece_hashes) == 1  # 16 KiB store pieces would give two for some
            assert (meta.pinned, meta.content_set) == (True, SET)
            assert entry.data_path.read_bytes() == object_bytes(key, size)


async def test_a_freed_slot_starts_the_next_fill_without_a_step(
    origin: tuple[OriginProxy, str], tmp_path: Path
) -> None:
    """One step plans and starts the first fill; each fill that ends starts the next in
    its slot, and counts in the progress, with no further step. A step looks at every
    planned key, so a step per finished object would make a large catalogue quadratic."""
    proxy, bucket = origin
    fill = {"allowOutsideWindow": True, "concurrency": 1}
    cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, fill)
    async with running_node(cfg) as (node, _):
        prepos = Prepositioner(node, clock=Clock(datetime(2026, 1, 15, tzinfo=UTC)))
        try:
            await prepos.step()
            assert prepos.active == 1
            for _ in range(1000):  # bounded: 10 s
                progress = prepos.progress[SET]
                if progress.objects_stored == len(SIZES) and not prepos.active:
                    break
                await asyncio.sleep(0.01)
            progress = prepos.progress[SET]
            assert (progress.objects_stored, progress.bytes_stored) == (len(SIZES), TOTAL)
            assert _object_gets(proxy) == len(SIZES)
            # The next step's recount agrees with what was counted on the way.
            await prepos.step()
            assert prepos.progress[SET].objects_stored == len(SIZES)
            assert prepos.progress[SET].bytes_stored == TOTAL
        finally:
            await prepos.close()


async def test_a_damaged_body_is_refetched_whole_and_its_partial_is_not_resumed(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """The fill journals each piece's hash as it goes, so when the body then fails the
    origin's CRC-32 its partial holds hashes of damaged bytes: it is dropped with the
    bytes, and the second fetch takes the whole object, not a Range after that partial."""
    key, size = "set/big.bin", 100 * KiB
    bucket = seed(s3_server, {key: size})
    async with OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket) as proxy:
        proxy.corrupt_body(key, at_byte=PIECE + 10, times=1)
        cfg = _config(tmp_path / "s", proxy.endpoint_url, bucket, {"allowOutsideWindow": True})
        data, _ = await _fill_alone(cfg, key)
        assert data == object_bytes(key, size)
        assert proxy.object_gets(key) == 2
        assert proxy.range_gets[key] == 0
        assert proxy.body_bytes[key] == 2 * size
    assert Partials(tmp_path / "s" / "prepos" / "partial").held_keys() == []
