"""Owner routing inside real cache nodes: two members of one site (client and peer apps,
the shared peer secret, the S3 origin on moto), wired exactly as the node binary does.

The member that is not the object's owner answers /manifest by filling the object through
the content path (the owner's peer port, then the origin), and forwards HTTP announces to
the owner over a member link it finds from the live peering membership: the owner's host
from its peer URL with the site's client port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import boto3
import pytest
from aiohttp import web
from yarl import URL

from cache_node import ring
from cache_node.app import Apps, create_apps
from cache_node.config import NodeConfig
from cache_node.tracker.addresses import parse_compact
from cache_node.tracker.bencode import decode
from cache_node.tracker.wiring import extension

from .conftest import object_bytes

pytestmark = pytest.mark.integration

KEY = "vod/members/seg-4.m4s"
PIECE = 16 * 1024
DATA = object_bytes(KEY, 3 * PIECE + 99)
HOSTS = {"edge-0": "127.0.0.41", "edge-1": "127.0.0.42"}


def free_on_all(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (members share their listen ports)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every host")


@pytest.fixture
async def two_members(
    s3_server: Any, tmp_path: Path, signing_key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, Apps]]:
    env = s3_server.env()
    creds = tmp_path / "origin-credentials"
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
    secret = tmp_path / "peer-secret"
    secret.write_bytes(b"a-site-secret-of-enough-length")
    hosts = list(HOSTS.values())
    client_port, peer_port = free_on_all(hosts), free_on_all(hosts)
    members = [{"name": n, "peerUrl": f"http://{h}:{peer_port}"} for n, h in HOSTS.items()]
    runners: list[web.AppRunner] = []
    nodes: dict[str, Apps] = {}
    try:
        for name, host in HOSTS.items():
            config = NodeConfig.model_validate(
                {
                    "site": {"namespace": "edge", "name": "routed"},
                    "listen": {"host": host, "clientPort": client_port, "peerPort": peer_port},
                    "store": {
                        "path": str(tmp_path / name),
                        "maxBytes": 1 << 26,
                        "pieceSizeBytes": PIECE,
                    },
                    "origin": {
                        "endpointUrl": s3_server.endpoint_url,
                        "bucket": bucket,
                        "credentialsDir": str(creds),
                    },
                    "peering": {"members": members, "secretFile": str(secret)},
                    "tokens": {"enabled": False},
                    "tracker": {"manifestKeyFile": str(signing_key_file)},
                }
            )
            base = f"http://{host}:{client_port}"
            apps = create_apps(
                config, name, extensions=[extension(node_name=name, web_seed_url=f"{base}/")]
            )
            for app, port in ((apps.client, client_port), (apps.peer, peer_port)):
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                runners.append(runner)
                await web.TCPSite(runner, host, port).start()
            nodes[name] = apps
        for _ in range(500):
            if all(apps.node.ready for apps in nodes.values()):
                break
            await asyncio.sleep(0.01)
        assert all(apps.node.ready for apps in nodes.values())
        yield nodes
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def client_url(nodes: dict[str, Apps], name: str) -> str:
    return f"http://{HOSTS[name]}:{nodes[name].node.config.listen.client_port}"


async def get(url: str, source: str) -> tuple[int, bytes]:
    conn = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn) as http,
        http.get(URL(url, encoded=True), allow_redirects=False) as resp,
    ):
        return resp.status, await resp.read()


async def test_a_member_that_is_not_the_owner_fills_and_forwards(
    two_members: dict[str, Apps],
) -> None:
    nodes = two_members
    owner, other = ring.rank(KEY, list(HOSTS))
    # the manifest from the member that does not own (nor hold) the object
    status, raw = await get(f"{client_url(nodes, other)}/manifest/{KEY}", "127.0.0.5")
    assert status == 200, raw
    body = json.loads(json.loads(raw)["manifest"])
    assert body["size"] == len(DATA)
    store = nodes[owner].node.store
    assert store is not None
    # filled through the owner, which keeps it: the owner streamed it cut-through
    # and commits once its own fill has every byte, which may be a moment later
    for _ in range(500):
        if KEY in store:
            break
        await asyncio.sleep(0.01)
    assert KEY in store
    ih = bytes.fromhex(body["infoHash"])

    def announce(peer: int, port: int) -> str:
        return urlencode(
            {
                "info_hash": ih,
                "peer_id": b"-EF0001-" + peer.to_bytes(12, "big"),
                "port": port,
                "left": 10,
                "object": KEY,
            }
        )

    status, raw = await get(f"{client_url(nodes, other)}/announce?{announce(1, 6001)}", "127.0.0.5")
    assert status == 200
    reply = decode(raw)
    assert isinstance(reply, dict)
    assert reply.get(b"failure reason") is None, reply
    assert reply[b"tracker id"] == owner.encode()  # answered by the owner, through the link
    status, raw = await get(f"{client_url(nodes, owner)}/announce?{announce(2, 6002)}", "127.0.0.6")
    reply = decode(raw)
    assert isinstance(reply, dict)
    assert reply[b"incomplete"] == 2
    peers = parse_compact(reply[b"peers"], 4)  # type: ignore[arg-type]
    assert [(str(a), p) for a, p in peers] == [("127.0.0.5", 6001)]
