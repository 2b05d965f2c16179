"""Peering across cache nodes of a site and across sites, against the S3 test server.

Nodes run in-process on loopback with real client, peer and metrics ports; the
origin is moto behind the counting proxy, so "origin GETs" are real requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from cache_node.bloom import BloomFilter, digest_of
from cache_node.peering import Hop, PeerAuthError, check_auth
from cache_node.ring import rank
from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.origin_proxy import OriginProxy
from edgefill_devenv.s3 import S3Server, free_port

from .conftest import (
    PEER_SECRET,
    Bucket,
    KiB,
    SiteNode,
    live_sites,
    make_bucket,
    node_config,
    until,
)
from .test_crash import node_process, wait_ready

pytestmark = pytest.mark.integration


@asynccontextmanager
async def sites_behind_proxy(
    s3_server: S3Server,
    bucket: Bucket,
    tmp_path: Path,
    sites: dict[str, int],
    upstreams: dict[str, list[tuple[str, str]]] | None = None,
) -> AsyncIterator[tuple[OriginProxy, dict[str, list[SiteNode]]]]:
    async with (
        OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket.name) as proxy,
        live_sites(tmp_path, proxy.endpoint_url, bucket.name, sites, upstreams) as started,
    ):
        yield proxy, started


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.read(), resp.headers.get("X-EdgeFill-Result", "")


async def _get_retrying(
    session: aiohttp.ClientSession, nodes: list[SiteNode], key: str, first: int
) -> bytes:
    """A client that retries on the next node when one fails (as players do)."""
    for attempt in range(len(nodes)):
        node = nodes[(first + attempt) % len(nodes)]
        try:
            status, body, _ = await _get(session, f"{node.client_url}/{key}")
        except aiohttp.ClientError:
            continue
        if status == 200:
            return body
    raise AssertionError(f"{key}: no node served it")


def test_rendezvous_ranking_is_stable_and_balanced() -> None:
    members = [f"n{i}" for i in range(3)]
    keys = [f"vod/{i}" for i in range(3000)]
    owners = [rank(k, members)[0] for k in keys]
    counts = {m: owners.count(m) for m in members}
    assert all(800 < c < 1200 for c in counts.values()), counts
    grown = [rank(k, [*members, "n3"])[0] for k in keys]
    moved = sum(1 for a, b in zip(owners, grown, strict=True) if a != b)
    assert all(b == "n3" for a, b in zip(owners, grown, strict=True) if a != b)
    assert 0.18 < moved / len(keys) < 0.32


def test_bloom_digest_round_trip_and_merge() -> None:
    a = digest_of(f"a/{i}" for i in range(1000))
    b = digest_of(f"b/{i}" for i in range(1000))
    wire = BloomFilter.from_bytes(a.to_bytes())
    assert all(f"a/{i}" in wire for i in range(1000))
    assert sum(f"x/{i}" in wire for i in range(10_000)) < 200  # < 2 % false positives
    wire.union(b)
    assert "b/7" in wire
    with pytest.raises(ValueError):
        BloomFilter.from_bytes(b"nonsense")


def test_peer_auth_is_constant_time_bearer() -> None:
    check_auth("Bearer " + PEER_SECRET.decode(), PEER_SECRET)
    for header in (None, "", "Bearer nope", "Basic " + PEER_SECRET.decode()):
        with pytest.raises(PeerAuthError):
            check_auth(header, PEER_SECRET)
    with pytest.raises(PeerAuthError):
        check_auth("Bearer x", None)


async def test_flash_crowd_over_two_sites_makes_one_origin_get_per_object(
    s3_server: S3Server, tmp_path: Path
) -> None:
    keys = [f"crowd/obj-{i:02d}.bin" for i in range(50)]
    bucket = make_bucket(s3_server, {k: 8 * KiB + i for i, k in enumerate(keys)})
    async with OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket.name) as proxy:
        proxy.pace_seconds = 0.01  # keep fills open while the crowd arrives
        async with live_sites(
            tmp_path,
            proxy.endpoint_url,
            bucket.name,
            {"a": 3, "b": 3},
            upstreams={"b": [("a", "parent")]},
        ) as sites:
            nodes = sites["a"] + sites["b"]
            rng = random.Random(7)
            plan = [(rng.choice(keys), rng.randrange(len(nodes))) for _ in range(1000)]
            # All six nodes, the proxy and the crowd share this test's one event loop on a
            # small machine: 1,000 requests are issued at once over 100 connections, so
            # that connect timeouts measure the nodes, not a saturated test process.
            connector = aiohttp.TCPConnector(limit=100)
            async with aiohttp.ClientSession(connector=connector) as s:
                bodies = await asyncio.gather(
                    *(_get_retrying(s, nodes, key, first) for key, first in plan)
                )
            for (key, _), body in zip(plan, bodies, strict=True):
                assert body == bucket.objects[key]
            requested = {key for key, _ in plan}
            assert {k: proxy.object_gets(k) for k in requested} == dict.fromkeys(requested, 1)
            peer_results = sum(
                n.node.metrics.registry.get_sample_value(
                    "edgefill_requests_total", {"result": "peer"}
                )
                or 0
                for n in nodes
            )
            assert peer_results > 0


async def test_parent_tier_and_mutual_parents_never_loop(
    s3_server: S3Server, tmp_path: Path
) -> None:
    keys = ["tier/held.bin", "tier/cold.bin"]
    bucket = make_bucket(s3_server, dict.fromkeys(keys, 20 * KiB))
    async with sites_behind_proxy(
        s3_server,
        bucket,
        tmp_path,
        {"a": 1, "b": 1},
        upstreams={"a": [("b", "parent")], "b": [("a", "parent")]},
    ) as (proxy, sites):
        a, b = sites["a"][0], sites["b"][0]
        async with aiohttp.ClientSession() as s:
            # The parent holds it: the child fills from the parent, not the origin.
            status, body, _ = await _get(s, f"{a.client_url}/tier/held.bin")
            assert (status, body) == (200, bucket.objects["tier/held.bin"])
            assert proxy.object_gets("tier/held.bin") == 1
            b.node.store.remove("tier/held.bin")
            await asyncio.sleep(0)
            status, body, _ = await _get(s, f"{b.client_url}/tier/held.bin")
            assert (status, body) == (200, bucket.objects["tier/held.bin"])
            assert proxy.object_gets("tier/held.bin") == 1
            # Each other's parent: a cold key goes a -> b -> origin, never back to a.
            status, body, _ = await _get(s, f"{a.client_url}/tier/cold.bin")
            assert (status, body) == (200, bucket.objects["tier/cold.bin"])
            assert proxy.object_gets("tier/cold.bin") == 1
            loops = b.node.metrics.registry.get_sample_value(
                "edgefill_peer_requests_total", {"sender": "site", "result": "loop"}
            )
            assert not loops


async def test_owner_down_falls_back_to_the_next_member(
    s3_server: S3Server, tmp_path: Path
) -> None:
    keys = [f"fallback/{i}.bin" for i in range(12)]
    bucket = make_bucket(s3_server, dict.fromkeys(keys, 10 * KiB))
    async with sites_behind_proxy(s3_server, bucket, tmp_path, {"a": 3}) as (proxy, sites):
        nodes = sites["a"]
        dead = nodes[0]
        await dead.stop()
        alive = nodes[1:]
        async with aiohttp.ClientSession() as s:
            for i, key in enumerate(keys):
                status, body, _ = await _get(s, f"{alive[i % 2].client_url}/{key}")
                assert (status, body) == (200, bucket.objects[key])
        assert all(proxy.object_gets(k) == 1 for k in keys)
        owned_by_dead = [k for k in keys if rank(k, [n.name for n in nodes])[0] == dead.name]
        assert owned_by_dead  # the test exercises the fallback
        failures = sum(
            n.node.metrics.registry.get_sample_value(
                "edgefill_upstream_failures_total", {"source": "peer", "cause": "health_miss"}
            )
            or 0
            for n in alive
        )
        assert failures >= 1


async def test_sibling_is_asked_only_when_its_digest_holds_the_key(
    s3_server: S3Server, tmp_path: Path
) -> None:
    keys = ["sib/held.bin", "sib/not-held.bin"]
    bucket = make_bucket(s3_server, dict.fromkeys(keys, 12 * KiB))
    async with sites_behind_proxy(
        s3_server,
        bucket,
        tmp_path,
        {"a": 2, "b": 1},
        upstreams={"b": [("a", "sibling")]},
    ) as (proxy, sites):
        a_nodes, b = sites["a"], sites["b"][0]
        async with aiohttp.ClientSession() as s:
            status, _, _ = await _get(s, f"{a_nodes[0].client_url}/sib/held.bin")
            assert status == 200
            await until(lambda: any("sib/held.bin" in n.node.store for n in a_nodes), "committed")
            await b.node.peering.refresh_sibling_digests()
            assert "edge/a" in b.node.peering.site_digests

            def sibling_requests() -> float:
                return sum(
                    n.node.metrics.registry.get_sample_value(
                        "edgefill_peer_requests_total",
                        {"sender": "site", "result": "accepted"},
                    )
                    or 0
                    for n in a_nodes
                )

            status, body, _ = await _get(s, f"{b.client_url}/sib/not-held.bin")
            assert (status, body) == (200, bucket.objects["sib/not-held.bin"])
            assert sibling_requests() == 0
            assert proxy.object_gets("sib/not-held.bin") == 1
            status, body, _ = await _get(s, f"{b.client_url}/sib/held.bin")
            assert (status, body) == (200, bucket.objects["sib/held.bin"])
            assert sibling_requests() == 1
            assert proxy.object_gets("sib/held.bin") == 1


async def test_peer_endpoint_refuses_without_the_site_secret(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = make_bucket(s3_server, {"p/x.bin": 1000})
    async with sites_behind_proxy(s3_server, bucket, tmp_path, {"a": 1}) as (proxy, sites):
        node = sites["a"][0]
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                async with s.get(f"{node.peer_url}/peer/v1/objects/p/x.bin", headers=headers) as r:
                    assert r.status == 401
                async with s.get(f"{node.peer_url}/peer/v1/digest", headers=headers) as r:
                    assert r.status == 401
            auth = {"Authorization": "Bearer " + PEER_SECRET.decode()}
            async with s.get(f"{node.peer_url}/peer/v1/objects/p/x.bin", headers=auth) as r:
                assert r.status == 200
                assert await r.read() == object_bytes("p/x.bin", 1000)
        assert proxy.total_gets() == 1
        assert node.node.peering.chain("p/x.bin", Hop(from_member="a-0")) == []


async def test_a_member_killed_during_a_flash_crowd(s3_server: S3Server, tmp_path: Path) -> None:
    """SIGKILL one of three node processes mid-crowd: every request still succeeds."""
    keys = [f"kill/obj-{i:02d}.bin" for i in range(30)]
    bucket = make_bucket(s3_server, dict.fromkeys(keys, 48 * KiB))
    secret = tmp_path / "secret"
    secret.write_bytes(PEER_SECRET)
    async with OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket.name) as proxy:
        proxy.pace_seconds = 0.02  # fills stay open long enough for the kill to hit some
        ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
        members = [
            {"name": f"k{i}", "peerUrl": f"http://127.0.0.1:{p[1]}"} for i, p in enumerate(ports)
        ]
        with contextlib.ExitStack() as stack:
            procs = []
            for i, (client_port, peer_port, metrics_port) in enumerate(ports):
                cfg = node_config(
                    tmp_path / f"store-{i}",
                    proxy.endpoint_url,
                    bucket.name,
                    peering={"members": members, "secretFile": str(secret)},
                )
                doc = json.loads(cfg.model_dump_json(by_alias=True))
                doc["listen"].update(
                    {"clientPort": client_port, "peerPort": peer_port, "metricsPort": metrics_port}
                )
                path = tmp_path / f"node-{i}.json"
                path.write_text(json.dumps(doc))
                procs.append(
                    stack.enter_context(node_process(path, tmp_path / f"node-{i}.log", f"k{i}"))
                )
            urls = [f"http://127.0.0.1:{p[0]}" for p in ports]
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
                for proc, (_, _, metrics_port) in zip(procs, ports, strict=True):
                    await wait_ready(s, f"http://127.0.0.1:{metrics_port}", proc)
                rng = random.Random(3)
                plan = [(rng.choice(keys), rng.randrange(3)) for _ in range(300)]

                async def fetch(key: str, first: int) -> bytes:
                    for attempt in range(6):
                        url = urls[(first + attempt) % 3]
                        try:
                            async with s.get(f"{url}/{key}") as resp:
                                body = await resp.read()
                                if resp.status == 200:
                                    return body
                        except aiohttp.ClientError:
                            pass
                    raise AssertionError(f"{key} never served")

                tasks = [asyncio.create_task(fetch(k, f)) for k, f in plan]
                await until(lambda: proxy.total_gets() >= 5, "fills under way")
                procs[0].send_signal(signal.SIGKILL)
                bodies = await asyncio.gather(*tasks)
        for (key, _), body in zip(plan, bodies, strict=True):
            assert body == bucket.objects[key]
        requested = {k for k, _ in plan}
        owned_by_dead = {k for k in requested if rank(k, ["k0", "k1", "k2"])[0] == "k0"}
        total = sum(proxy.object_gets(k) for k in requested)
        assert total <= len(requested) + len(owned_by_dead)
        assert all(proxy.object_gets(k) <= 2 for k in requested)
