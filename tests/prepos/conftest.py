"""Fixtures for pre-positioning tests: a seeded bucket, the counting origin proxy,
and sites of real cache-node processes, each member on its own loopback address
(127.0.20.x), with the S3 test server as the origin.

Objects are small (a few KiB to tens of KiB, 16 KiB pieces) so a whole site
fills in seconds on the shared 2-core machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest

from cache_node.config import NodeConfig
from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.origin_proxy import OriginProxy
from edgefill_devenv.procs import kill_process, stop_process
from edgefill_devenv.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port

KiB = 1024
PIECE = 16 * KiB
SECRET = "prepos-site-secret-0123456789"
_ids = itertools.count()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("EDGEFILL_S3_ENDPOINT", raising=False)


def s3_client(server: S3Server | str) -> Any:
    """A boto3 client for the S3 test server (or any endpoint URL)."""
    return boto3.client(
        "s3",
        endpoint_url=server if isinstance(server, str) else server.endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


def seed(server: S3Server, sizes: dict[str, int], extra: dict[str, bytes] | None = None) -> str:
    """A fresh bucket holding ``object_bytes(key, size)`` per key; returns its name."""
    name = f"prepos-{os.getpid()}-{next(_ids)}"
    client = s3_client(server)
    client.create_bucket(Bucket=name)
    for key, size in sizes.items():
        client.put_object(Bucket=name, Key=key, Body=object_bytes(key, size))
    for key, body in (extra or {}).items():
        client.put_object(Bucket=name, Key=key, Body=body)
    return name


def jsonl_manifest(sizes: dict[str, int]) -> bytes:
    return b"".join(
        json.dumps({"key": k, "size": s, "rank": i + 1}).encode() + b"\n"
        for i, (k, s) in enumerate(sizes.items())
    )


@pytest.fixture
async def proxy_for() -> AsyncIterator[Callable[[S3Server, str], Any]]:
    proxies: list[OriginProxy] = []

    async def make(server: S3Server, bucket: str) -> OriginProxy:
        proxy = OriginProxy(upstream=server.endpoint_url, bucket=bucket)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


def site_config(
    *,
    store: Path,
    endpoint: str,
    bucket: str,
    host: str,
    ports: tuple[int, int, int],
    members: list[tuple[str, str]],
    secret_file: Path,
    fill: dict[str, Any],
    fill_plan: list[dict[str, Any]],
) -> dict[str, Any]:
    client, peer, metrics = ports
    doc: dict[str, Any] = {
        "site": {"namespace": "edge", "name": "prepos-site"},
        "listen": {"host": host, "clientPort": client, "peerPort": peer, "metricsPort": metrics},
        "store": {"path": str(store), "maxBytes": 256 * 1024 * KiB, "pieceSizeBytes": PIECE},
        "origin": {
            "endpointUrl": endpoint,
            "bucket": bucket,
            "connectTimeoutSeconds": 2,
            "readTimeoutSeconds": 5,
            "totalDeadlineSeconds": 60,
            "maxAttempts": 4,
        },
        "peering": {
            "members": [{"name": n, "peerUrl": u} for n, u in members],
            "secretFile": str(secret_file),
        },
        "fill": fill,
        "fillPlan": fill_plan,
        "tokens": {"enabled": False},
        "tracker": {"enabled": False},
    }
    NodeConfig.model_validate(doc)  # fail here, not in the child, on a bad test config
    return doc


@dataclass
class Member:
    name: str
    host: str
    ports: tuple[int, int, int]
    store: Path
    config_path: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports[2]}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EDGEFILL_S3_ENDPOINT"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cache_node",
                    "--config",
                    str(self.config_path),
                    "--node-name",
                    self.name,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def held(self, key: str) -> dict[str, Any] | None:
        """The committed meta document for ``key`` in this member's store, if any."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        meta = self.store / "objects" / digest[:2] / f"{digest}.meta"
        try:
            doc: dict[str, Any] = json.loads(meta.read_bytes())
        except FileNotFoundError:
            return None
        return doc


@dataclass
class Site:
    """Cache-node processes of one EdgeSite on 127.0.20.x, sharing one config shape."""

    root: Path
    endpoint: str
    bucket: str
    fill: dict[str, Any]
    fill_plan: list[dict[str, Any]]
    members: list[Member] = field(default_factory=list)
    subnet: int = 20

    def __post_init__(self) -> None:
        self.secret_file = self.root / "peer-secret"
        self.secret_file.write_text(SECRET)

    def add(self) -> Member:
        index = len(self.members) + 1
        host = f"127.0.{self.subnet}.{index}"
        ports = (free_port(host), free_port(host), free_port(host))
        folder = self.root / f"cache-{index - 1}"
        folder.mkdir()
        member = Member(
            name=f"cache-{index - 1}",
            host=host,
            ports=ports,
            store=folder / "store",
            config_path=folder / "node.json",
            log=folder / "node.log",
        )
        self.members.append(member)
        return member

    def write_configs(self, members: list[Member] | None = None) -> None:
        """(Re-)render every member's config with the current membership."""
        listed = [(m.name, m.peer_url) for m in self.members]
        for m in members or self.members:
            doc = site_config(
                store=m.store,
                endpoint=self.endpoint,
                bucket=self.bucket,
                host=m.host,
                ports=m.ports,
                members=listed,
                secret_file=self.secret_file,
                fill=self.fill,
                fill_plan=self.fill_plan,
            )
            tmp = m.config_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(m.config_path)

    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def stop(self) -> None:
        for member in self.members:
            member.stop()


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def make(
        endpoint: str, bucket: str, *, fill: dict[str, Any], plan: list[dict[str, Any]]
    ) -> Site:
        root = tmp_path / f"site-{len(sites)}"
        root.mkdir()
        site = Site(root=root, endpoint=endpoint, bucket=bucket, fill=fill, fill_plan=plan)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop()


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None
            doc: dict[str, Any] = await resp.json()
            return doc
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def wait_ready(session: aiohttp.ClientSession, member: Member, attempts: int = 600) -> None:
    for _ in range(attempts):
        assert member.proc is not None
        assert member.proc.poll() is None, (
            f"{member.name} exited; log:\n{member.log.read_text()[-3000:]}"
        )
        try:
            async with session.get(f"{member.metrics_url}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{member.name} never became ready")


async def metric(session: aiohttp.ClientSession, member: Member, name: str) -> float:
    """Sum of every sample of ``name`` on the member's /metrics."""
    async with session.get(f"{member.metrics_url}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total
