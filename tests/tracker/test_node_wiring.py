"""The tracker inside a real cache node: a manifest request for an object the node does not
hold fills it from the S3 origin (moto on loopback) through the node's content path, the
manifest comes from the store's own piece hashes, the node serves it as web seed by Range,
and announces work on the same port.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import boto3
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cache_node.app import create_apps
from cache_node.config import NodeConfig
from cache_node.ring import rank
from cache_node.store import Entry, ObjectInfo, Store
from cache_node.tracker.manifest import b64url_decode, verify_manifest, verify_piece
from cache_node.tracker.views import TRACKER
from cache_node.tracker.wiring import extension, piece_info_of

from .conftest import object_bytes

pytestmark = pytest.mark.integration

KEY = "vod/wired/seg-1.m4s"
PIECE = 16 * 1024
DATA = object_bytes(KEY, 5 * PIECE + 321)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_manifest_from_the_store_and_web_seed_by_range(
    s3_server: Any, tmp_path: Path, signing_key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = s3_server.env()
    creds = tmp_path / "origin-credentials"  # as the node mounts its Secret
    creds.mkdir()
    (creds / "accessKeyId").write_text(env["AWS_ACCESS_KEY_ID"])
    (creds / "secretAccessKey").write_text(env["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", env["AWS_DEFAULT_REGION"])
    monkeypatch.delenv("EDGEFILL_S3_ENDPOINT", raising=False)
    bucket = f"media-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=KEY, Body=DATA)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = NodeConfig.model_validate(
        {
            "site": {"namespace": "edge", "name": "wired"},
            "listen": {"host": "127.0.0.1"},
            "store": {
                "path": str(tmp_path / "store"),
                "maxBytes": 1 << 26,
                "pieceSizeBytes": PIECE,
            },
            "origin": {
                "endpointUrl": s3_server.endpoint_url,
                "bucket": bucket,
                "credentialsDir": str(creds),
            },
            "tokens": {"enabled": False},
            "tracker": {"manifestKeyFile": str(signing_key_file)},
        }
    )
    apps = create_apps(
        config, "node-0", extensions=[extension(node_name="node-0", web_seed_url=f"{base}/")]
    )
    runner = web.AppRunner(apps.client, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        for _ in range(500):
            if apps.node.ready:
                break
            await asyncio.sleep(0.01)
        assert apps.node.ready
        async with aiohttp.ClientSession() as http:
            # not at the origin: no manifest (and no swarm) for it
            async with http.get(f"{base}/manifest/vod/wired/absent.m4s") as resp:
                assert resp.status == 404
            # not stored yet: the manifest request fills it through the content path
            assert apps.node.store is not None
            assert KEY not in apps.node.store
            async with http.get(f"{base}/manifest/{KEY}") as resp:
                status, raw = resp.status, await resp.read()
            assert status == 200, raw
            assert KEY in apps.node.store
            async with http.get(f"{base}/{KEY}") as resp:  # now a hit
                assert resp.status == 200
                assert await resp.read() == DATA
            doc = json.loads(raw)
            async with http.get(f"{base}/manifest-keys") as resp:
                jwk = (await resp.json())["keys"][0]
            public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
            body = verify_manifest(doc, {jwk["kid"]: public})
            assert body["size"] == len(DATA)
            assert body["urlList"] == [f"{base}/{KEY}"]
            for i in range(len(body["pieces"])):  # type: ignore[arg-type]
                start = i * PIECE
                end = min(start + PIECE, len(DATA)) - 1
                headers = {"Range": f"bytes={start}-{end}"}
                async with http.get(body["urlList"][0], headers=headers) as resp:  # type: ignore[index]
                    assert resp.status == 206
                    verify_piece(body, i, await resp.read())
            ih = bytes.fromhex(body["infoHash"])  # type: ignore[arg-type]
            query = urlencode(
                {"info_hash": ih, "peer_id": b"-EF0001-000000000001", "port": 6881, "left": 0}
            )
            async with http.get(f"{base}/announce?{query}") as resp:
                assert resp.status == 200
                assert (await resp.read()).startswith(b"d8:complete")
    finally:
        await runner.cleanup()


async def test_reloaded_config_reaches_the_tracker_without_a_restart(
    s3_server: Any, tmp_path: Path
) -> None:
    """A re-rendered ConfigMap (new member URLs, interval, client networks) applies live."""
    port = free_port()
    members = [
        {"name": "node-0", "peerUrl": "http://127.0.0.1:1"},
        {"name": "node-1", "peerUrl": "http://127.0.0.2:1"},
    ]
    doc: dict[str, Any] = {
        "site": {"namespace": "edge", "name": "reload"},
        "listen": {"host": "127.0.0.1"},
        "store": {"path": str(tmp_path / "store"), "maxBytes": 1 << 24},
        "origin": {"endpointUrl": s3_server.endpoint_url, "bucket": "unused"},
        "tokens": {"enabled": False},
        "peering": {"members": members},
        "tracker": {"announceIntervalSeconds": 120},
    }
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc))
    apps = create_apps(
        NodeConfig.model_validate(doc),
        "node-0",
        extensions=[extension(node_name="node-0", web_seed_url=f"http://127.0.0.1:{port}/")],
        config_path=path,
        config_poll_seconds=0.05,
    )
    runner = web.AppRunner(apps.client, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        service = apps.client[TRACKER]
        # a key whose swarm node-1 owns (rendezvous ranking over both members)
        key = next(
            k
            for k in (f"vod/k{i}.m4s" for i in range(100))
            if rank(k, ["node-0", "node-1"])[0] == "node-1"
        )
        assert service.owner_url(key) is None  # no member URLs rendered yet
        assert service.interval == 120

        doc["tracker"] = {
            "announceIntervalSeconds": 60,
            "memberClientUrls": {
                "node-0": "https://cache-0.reload.isp.example",
                "node-1": "https://cache-1.reload.isp.example",
            },
        }
        doc["clientNetworks"] = ["198.51.100.0/24"]
        path.write_text(json.dumps(doc))
        for _ in range(400):
            if service.interval == 60:
                break
            await asyncio.sleep(0.025)
        assert service.interval == 60
        assert service.min_interval == 15
        assert service.owner_url(key) == "https://cache-1.reload.isp.example"
        assert [str(n) for n in service.locality.client_networks] == ["198.51.100.0/24"]
        assert service.registry.locality is service.locality
    finally:
        await runner.cleanup()


async def test_piece_info_is_computed_once_and_never_from_damaged_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps CRC-32 piece checksums; the SHA-256 a manifest signs is read back
    once per entry, shared by concurrent askers (one that gives up does not stop it for
    the others), and a piece that fails its CRC-32 yields no piece info at all."""
    store = Store(tmp_path, max_bytes=1 << 26, piece_size=PIECE)
    store.recover(60)

    async def commit(key: str) -> Entry:
        writer = store.begin(ObjectInfo(key=key, size=len(DATA), etag='"e"', last_modified=0.0))
        writer.write(DATA)
        return await writer.commit()

    calls = 0
    real = store.piece_sha256

    async def counted(entry: Entry) -> tuple[str, ...] | None:
        nonlocal calls
        calls += 1
        return await real(entry)

    monkeypatch.setattr(store, "piece_sha256", counted)
    entry = await commit(KEY)
    first, second = await asyncio.gather(piece_info_of(store, entry), piece_info_of(store, entry))
    assert first is not None
    assert first == second
    assert calls == 1
    assert first.sha256 == tuple(
        hashlib.sha256(DATA[i : i + PIECE]).digest() for i in range(0, len(DATA), PIECE)
    )
    assert await piece_info_of(store, entry) is first
    assert calls == 1

    other = await commit("vod/wired/other")
    quitter = asyncio.create_task(piece_info_of(store, other))
    stayer = asyncio.create_task(piece_info_of(store, other))
    await asyncio.sleep(0)
    quitter.cancel()
    assert await stayer is not None
    assert quitter.cancelled()

    damaged = await commit("vod/wired/damaged")
    raw = bytearray(damaged.data_path.read_bytes())
    raw[PIECE + 7] ^= 0x01
    damaged.data_path.write_bytes(bytes(raw))
    assert await piece_info_of(store, damaged) is None
    assert "vod/wired/damaged" not in store
    assert store.stats.corrupt_objects == 1
