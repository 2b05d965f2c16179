"""Fixtures for cache-node tests: a seeded bucket, a counting origin proxy, a live node.

Objects are small (tens of KiB to a few hundred KiB) so the suite stays light on
the shared 2-core machine. Every node listens on 127.0.0.1 with ephemeral ports.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web

from cache_node.app import Apps, create_apps, fast_lane
from cache_node.config import NodeConfig
from cache_node.fastlane import make_runner
from cache_node.tokens import Claims, sign
from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.origin_proxy import OriginProxy
from edgefill_devenv.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server

KiB = 1024
_bucket_ids = itertools.count()

TOKEN_KEYS = {"k1": b"first-secret-key-0123456789abcdef", "k2": b"second-secret-key-0123456789abc"}


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("EDGEFILL_S3_ENDPOINT", raising=False)


@dataclass
class Bucket:
    name: str
    server: S3Server
    objects: dict[str, bytes]

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.server.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def put(self, key: str, data: bytes, **extra: str) -> None:
        self.client().put_object(Bucket=self.name, Key=key, Body=data, **extra)
        self.objects[key] = data


def make_bucket(server: S3Server, sizes: dict[str, int]) -> Bucket:
    name = f"edgefill-test-{os.getpid()}-{next(_bucket_ids)}"
    bucket = Bucket(name=name, server=server, objects={})
    bucket.client().create_bucket(Bucket=name)
    for key, size in sizes.items():
        bucket.put(key, object_bytes(key, size))
    return bucket


@pytest.fixture
def bucket(s3_server: S3Server) -> Bucket:
    return make_bucket(
        s3_server,
        {
            "vod/small.bin": 3000,
            "vod/medium.bin": 200 * KiB + 17,
            "vod/empty.bin": 0,
            "vod/title/seg-1.m4s": 100 * KiB,
            "vod/title/seg-2.m4s": 64 * KiB,
            "other/secret.bin": 5000,
        },
    )


@pytest.fixture
async def proxy(bucket: Bucket) -> AsyncIterator[OriginProxy]:
    async with OriginProxy(upstream=bucket.server.endpoint_url, bucket=bucket.name) as p:
        yield p


def make_token(
    kid: str = "k1",
    *,
    scope: str = "/vod/title/",
    exp: int | None = None,
    nbf: int | None = None,
    secret: bytes | None = None,
) -> str:
    """A token for the test key ``kid`` (:data:`TOKEN_KEYS`), valid for 10 minutes by default."""
    now = int(time.time())
    claims = Claims(
        kid=kid, expires=exp if exp is not None else now + 600, not_before=nbf, scope=scope
    )
    return sign(claims, secret if secret is not None else TOKEN_KEYS[kid])


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "token-keys"
    folder.mkdir()
    for kid, secret in TOKEN_KEYS.items():
        (folder / kid).write_bytes(secret)
    return folder


def node_config(
    store: Path,
    endpoint: str,
    bucket: str,
    *,
    tokens_dir: Path | None = None,
    **overrides: Any,
) -> NodeConfig:
    doc: dict[str, Any] = {
        "site": {"namespace": "edge", "name": "test-site"},
        "listen": {"host": "127.0.0.1"},
        "store": {"path": str(store), "maxBytes": 64 * 1024 * KiB, "pieceSizeBytes": 16 * KiB},
        "origin": {
            "endpointUrl": endpoint,
            "bucket": bucket,
            "connectTimeoutSeconds": 2,
            "readTimeoutSeconds": 5,
            "totalDeadlineSeconds": 30,
            "maxAttempts": 4,
        },
        "tokens": (
            {"enabled": True, "keysDir": str(tokens_dir)}
            if tokens_dir is not None
            else {"enabled": False}
        ),
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            doc.setdefault(section, {}).update(values)
        else:
            doc[section] = values
    return NodeConfig.model_validate(doc)


@dataclass
class LiveNode:
    apps: Apps
    client_url: str
    metrics_url: str

    @property
    def store(self) -> Any:
        return self.apps.node.store


def _runner(apps: Apps, app: web.Application) -> web.AppRunner:
    """As ``python -m cache_node`` runs them: the client port with its fast lane."""
    answer = fast_lane(apps) if app is apps.client else None
    return make_runner(app, answer, access_log=None)


@asynccontextmanager
async def live_node(config: NodeConfig, name: str = "node-0") -> AsyncIterator[LiveNode]:
    """The node's client and metrics apps on ephemeral loopback ports, ready to serve."""
    apps = create_apps(config, name)
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    try:
        for app in (apps.client, apps.metrics):
            runner = _runner(apps, app)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        for _ in range(500):
            if apps.node.ready:
                break
            await asyncio.sleep(0.01)
        assert apps.node.ready, apps.node.recovery_error
        yield LiveNode(apps=apps, client_url=urls[0], metrics_url=urls[1])
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def until(condition: Callable[[], bool], what: str, attempts: int = 500) -> None:
    """Wait for ``condition`` (polling, bounded by attempts, not by a clock)."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def config_for(tmp_path: Path) -> Callable[..., NodeConfig]:
    def build(endpoint: str, bucket: str, **kw: Any) -> NodeConfig:
        return node_config(tmp_path / "store", endpoint, bucket, **kw)

    return build


PEER_SECRET = b"site-shared-peer-secret-0123456789"


@dataclass
class SiteNode:
    name: str
    apps: Apps
    client_url: str
    peer_url: str
    metrics_url: str
    runners: list[web.AppRunner]

    @property
    def node(self) -> Any:
        return self.apps.node

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()


def _listening_socket() -> socket.socket:
    """A loopback socket bound now and held until its site serves on it: picking a free
    port and binding it later lets a concurrent test process take it in between."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def live_sites(
    tmp_path: Path,
    endpoint: str,
    bucket: str,
    sites: dict[str, int],
    upstreams: dict[str, list[tuple[str, str]]] | None = None,
) -> AsyncIterator[dict[str, list[SiteNode]]]:
    """Start ``sites`` ({name: node count}) with peering; ``upstreams`` = {site: [(site, role)]}.

    A site's peer URL for other sites is its first node's peer endpoint (a Service in a
    cluster picks any pod; any node forwards to the key's owner).
    """
    secret_file = tmp_path / "peer-secret"
    secret_file.write_bytes(PEER_SECRET)
    socks = {
        (site, i): (_listening_socket(), _listening_socket(), _listening_socket())
        for site, count in sites.items()
        for i in range(count)
    }
    ports = {
        where: tuple(int(sock.getsockname()[1]) for sock in trio) for where, trio in socks.items()
    }
    members = {
        site: [
            {"name": f"{site}-{i}", "peerUrl": f"http://127.0.0.1:{ports[(site, i)][1]}"}
            for i in range(count)
        ]
        for site, count in sites.items()
    }
    started: dict[str, list[SiteNode]] = {}
    try:
        for site, count in sites.items():
            ups = [
                {"name": f"edge/{other}", "role": role, "peerUrl": members[other][0]["peerUrl"]}
                for other, role in (upstreams or {}).get(site, [])
            ]
            for i in range(count):
                client_port, peer_port, metrics_port = ports[(site, i)]
                cfg = node_config(
                    tmp_path / f"store-{site}-{i}",
                    endpoint,
                    bucket,
                    site={"namespace": "edge", "name": site},
                    # Generous timeouts: on a loaded shared machine a slow answer must not
                    # count as a dead peer (that would send the miss to the origin).
                    origin={"connectTimeoutSeconds": 10, "readTimeoutSeconds": 30},
                    peering={
                        "members": members[site],
                        "upstreams": ups,
                        "secretFile": str(secret_file),
                        "digestRefreshSeconds": 3600,
                        # Six nodes share the test's one event loop on a shared machine.
                        "connectTimeoutSeconds": 10,
                    },
                )
                name = f"{site}-{i}"
                apps = create_apps(cfg, name)
                runners = []
                for app, sock in zip(
                    (apps.client, apps.peer, apps.metrics), socks[(site, i)], strict=True
                ):
                    runner = _runner(apps, app)
                    await runner.setup()
                    runners.append(runner)
                    await web.SockSite(runner, sock).start()
                started.setdefault(site, []).append(
                    SiteNode(
                        name=name,
                        apps=apps,
                        client_url=f"http://127.0.0.1:{client_port}",
                        peer_url=f"http://127.0.0.1:{peer_port}",
                        metrics_url=f"http://127.0.0.1:{metrics_port}",
                        runners=runners,
                    )
                )
        everyone = [n for nodes in started.values() for n in nodes]
        await until(lambda: all(n.node.ready for n in everyone), "all nodes ready")
        yield started
    finally:
        for nodes in started.values():
            for n in nodes:
                await n.stop()
        for trio in socks.values():
            for sock in trio:
                sock.close()
