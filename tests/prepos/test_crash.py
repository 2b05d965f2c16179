"""SIGKILL a filling node ten times: the fill completes and refetches stay piece-bounded.

One cache-node process (127.0.21.1) pre-positions a ContentSet from the S3
test server behind the counting proxy, which is paced so that fills are in
flight when each kill lands. After every restart the node resumes its
partials with ``Range`` + ``If-Match`` from the last verified piece. At the
end every object is stored, pinned and byte-exact, and the origin sent at
most one piece (plus one proxy chunk in socket buffers) per in-flight object
per kill beyond the catalogue's size.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.origin_proxy import CHUNK
from edgefill_devenv.s3 import S3Server

from .conftest import PIECE, KiB, Site, get_json, seed, wait_ready

pytestmark = pytest.mark.integration

KILLS = 10
CONCURRENCY = 4
SIZES = {f"crash/obj-{i:02d}.bin": 160 * KiB + i * 3000 for i in range(24)}
SET = "media/crash"


async def test_sigkill_mid_fill_ten_times_completes_with_bounded_refetch(
    s3_server: S3Server, site_factory: Any, proxy_for: Any
) -> None:
    bucket = seed(s3_server, SIZES)
    proxy = await proxy_for(s3_server, bucket)
    plan = [
        {
            "name": SET,
            "generation": 1,
            "source": {"bucket": bucket, "prefixes": ["crash/"]},
            "pieceSizeBytes": PIECE,
        }
    ]
    site: Site = site_factory(
        proxy.endpoint_url,
        bucket,
        fill={"allowOutsideWindow": True, "concurrency": CONCURRENCY},
        plan=plan,
    )
    site.subnet = 21
    node = site.add()
    site.write_configs()
    total = sum(SIZES.values())
    proxy.pace_seconds = 0.01  # ~1.6 MB/s per stream: kills land mid-body
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        kills = 0
        while kills < KILLS:
            node.start()
            await wait_ready(session, node)
            before = proxy.total_bytes()
            if before >= total:
                break
            step = (40 + 25 * (kills % 4)) * KiB  # vary how far each run gets
            for _ in range(3000):
                if proxy.total_bytes() >= before + step:
                    break
                await asyncio.sleep(0.01)
            node.kill()
            kills += 1
        assert kills == KILLS, "the fill finished before ten kills; slow the proxy down"
        proxy.pace_seconds = 0.0
        node.start()
        await wait_ready(session, node)
        doc: dict[str, Any] | None = None
        for _ in range(1500):
            doc = await get_json(session, f"{node.metrics_url}/status")
            entry = doc["fillPlan"][0] if doc else {}
            if entry.get("objectsTotal") == len(SIZES) and entry.get("objectsPending") == 0:
                break
            await asyncio.sleep(0.05)
        assert doc is not None
        assert doc["fillPlan"][0]["bytesStored"] == total, doc
    for key in SIZES:
        meta = node.held(key)
        assert meta is not None, key
        assert meta["pinned"] is True
    # Bytes: every object whole once, plus at most one piece and one socket chunk per
    # in-flight object per kill.
    refetched = proxy.total_bytes() - total
    assert proxy.range_gets, "no fill resumed from a partial"
    assert 0 <= refetched <= KILLS * CONCURRENCY * (PIECE + CHUNK), refetched
    # Content check through the client port of the restarted node.
    client = f"http://{node.host}:{node.ports[0]}"
    async with aiohttp.ClientSession() as session:
        for key, size in SIZES.items():
            async with session.get(f"{client}/{key}") as resp:
                assert resp.status == 200
                assert await resp.read() == object_bytes(key, size)
    print(f"refetched {refetched} bytes over {KILLS} kills (bound per kill per stream {PIECE})")
