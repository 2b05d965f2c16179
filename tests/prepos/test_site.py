"""A 3-node site fills its ContentSets; then a 4th member joins and takes its keys from peers.

Scaled version of issue 5's acceptance (full scale: ``bench/prepos/acceptance.py``):
real cache-node processes on 127.0.20.x, the S3 test server behind a counting
proxy as the origin, 500 small objects in two ContentSets (a manifest with
``copies: 2`` and a prefix listing with ``copies: 1``). Checked: every key
lands on exactly ``copies`` nodes (the rendezvous owners), pinned to its
ContentSet; each object is fetched from the origin exactly once per copy;
every node's /status reaches 100% as the operator reads it. After the join:
only the keys whose owners changed move (a quarter of the copies, +-5
points), the new member takes them from the old owners (0 origin fetches),
and the old owners keep them as evictable (unpinned), not deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from cache_node.ring import owners
from edgefill_devenv.s3 import S3Server
from edgefill_operator.report import parse_report

from .conftest import PIECE, KiB, Site, get_json, jsonl_manifest, metric, seed, wait_ready

pytestmark = pytest.mark.integration

MANIFEST_SET = "media/popular"
LISTED_SET = "media/catalogue"
MANIFEST_KEY = "manifests/popular.jsonl"


def _sizes(prefix: str, n: int) -> dict[str, int]:
    return {f"{prefix}/obj-{i:03d}.bin": 4 * KiB + (i * 7919) % (40 * KiB) for i in range(n)}


async def _statuses(session: aiohttp.ClientSession, site: Site) -> list[dict[str, Any] | None]:
    return [await get_json(session, f"{m.metrics_url}/status") for m in site.members]


def _filled(statuses: list[dict[str, Any] | None], names: list[str]) -> bool:
    for doc in statuses:
        if doc is None:
            return False
        entries = {e["name"]: e for e in doc["fillPlan"]}
        for name in names:
            entry = entries.get(name)
            if entry is None or "objectsPending" not in entry or entry["objectsPending"]:
                return False
    return True


async def _until_filled(session: aiohttp.ClientSession, site: Site, names: list[str]) -> None:
    for _ in range(1200):
        if _filled(await _statuses(session, site), names):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never filled: {await _statuses(session, site)}")


async def test_site_fills_each_key_on_copies_nodes_then_a_join_moves_keys_from_peers(
    s3_server: S3Server, site_factory: Any, proxy_for: Any
) -> None:
    # 500 keys as in the acceptance (small objects, so CI stays quick): 650 copies.
    popular = _sizes("vod/popular", 150)
    listed = _sizes("vod/library", 350)
    bucket = seed(s3_server, {**popular, **listed}, {MANIFEST_KEY: jsonl_manifest(popular)})
    proxy = await proxy_for(s3_server, bucket)
    plan = [
        {
            "name": MANIFEST_SET,
            "generation": 1,
            "source": {"bucket": bucket, "manifestKey": MANIFEST_KEY},
            "copies": 2,
            "pieceSizeBytes": PIECE,
            "priority": 500,
        },
        {
            "name": LISTED_SET,
            "generation": 1,
            "source": {"bucket": bucket, "prefixes": ["vod/library/"]},
            "copies": 1,
            "pieceSizeBytes": PIECE,
        },
    ]
    site: Site = site_factory(
        proxy.endpoint_url,
        bucket,
        fill={"allowOutsideWindow": True, "concurrency": 4},
        plan=plan,
    )
    for _ in range(3):
        site.add()
    site.write_configs()
    copies = {**dict.fromkeys(popular, 2), **dict.fromkeys(listed, 1)}
    sets = {**dict.fromkeys(popular, MANIFEST_SET), **dict.fromkeys(listed, LISTED_SET)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for member in site.members:
            member.start()
        for member in site.members:
            await wait_ready(session, member)
        await _until_filled(session, site, [MANIFEST_SET, LISTED_SET])

        names = site.names()
        for key, n in copies.items():
            expected = set(owners(key, names, n))
            holding = {m.name for m in site.members if m.held(key) is not None}
            assert holding == expected, key
            for m in site.members:
                meta = m.held(key)
                if meta is not None:
                    assert meta["pinned"] is True
                    assert meta["contentSet"] == sets[key]
            # Exactly one origin GET per copy, and whole bodies only.
            assert proxy.object_gets(key) == n, key
            assert proxy.body_bytes[key] == n * (popular | listed)[key], key

        owned_total = {MANIFEST_SET: 0, LISTED_SET: 0}
        for doc in await _statuses(session, site):
            assert doc is not None
            report = parse_report(doc)
            for name in (MANIFEST_SET, LISTED_SET):
                assert report.fill[name].complete
                assert report.fill[name].percent() == "100%"
                owned_total[name] += report.fill[name].objects_total
        # Summed over the members, the totals are the planned copies.
        assert owned_total == {MANIFEST_SET: 2 * len(popular), LISTED_SET: len(listed)}

        # --- 3 -> 4 members ---------------------------------------------------------------
        before = list(names)
        proxy.reset()
        newcomer = site.add()
        site.write_configs()  # the old members' config watchers pick this up
        newcomer.start()
        await wait_ready(session, newcomer)
        await _until_filled(session, site, [MANIFEST_SET, LISTED_SET])
        after = site.names()

        moved = [k for k in listed if owners(k, before, 1) != owners(k, after, 1)]
        assert 0 < len(moved) < len(listed) / 2
        # About a quarter of the key copies move to the newcomer (the issue: +-5 points).
        moved_copies = sum(
            len(set(owners(k, after, n)) - set(owners(k, before, n))) for k, n in copies.items()
        )
        assert abs(moved_copies / sum(copies.values()) - 0.25) <= 0.05
        assert all(owners(k, after, 1) == [newcomer.name] for k in moved)
        gained = [k for k in copies if newcomer.name in owners(k, after, copies[k])]
        for key in gained:
            assert newcomer.held(key) is not None, key
        # Every moved copy came from a peer: no object fetch reached the origin.
        assert sum(proxy.object_gets(k) for k in copies) == 0, dict(proxy.gets)
        assert await metric(session, newcomer, "edgefill_fill_streamed_bytes_total") > 0
        # The old owners keep what they lost, unpinned (evictable), not deleted.
        await asyncio.sleep(0)
        for key in moved:
            (old,) = owners(key, before, 1)
            holder = next(m for m in site.members if m.name == old)
            placement: tuple[object, object] = (True, None)
            for _ in range(100):
                meta = holder.held(key)
                assert meta is not None, key
                placement = (meta["pinned"], meta["contentSet"])
                if placement == (False, None):
                    break
                await asyncio.sleep(0.1)
            assert placement == (False, None), key
