"""Fixtures for the tracker tests: a real in-memory piece-hash source, configs, a live node.

``MemoryHashes`` is a real implementation of the ``PieceHashSource`` protocol
(it hashes the bytes it holds), standing in for the store that another part of
the cache node provides; it counts lookups so tests can assert the tracker
does not hit the store for unknown swarms.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cache_node.config import NodeConfig
from cache_node.tracker import TRACKER, TrackerService, register
from cache_node.tracker.manifest import PieceInfo

PIECE = 16 * 1024
JS = Path(__file__).with_name("js")


async def run_browser_script(script: str, tracker_url: str, key: str, module: str) -> Any:
    """Run a Node script that drives headless Chromium peers; its last stdout line is JSON.

    Fails (never skips) when Chromium, node or the npm packages are missing.
    """
    chromium, node = shutil.which("chromium"), shutil.which("node")
    if chromium is None or node is None or not (JS / "node_modules" / module).is_dir():
        pytest.fail("needs apt chromium, node and `npm ci --ignore-scripts` in tests/tracker/js")
    proc = await asyncio.create_subprocess_exec(
        node,
        script,
        tracker_url,
        key,
        chromium,
        cwd=JS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{script} did not finish")
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()[-3000:]
    result = json.loads(lines[-1])
    if not result.get("ok"):
        # The whole result (every peer's stats), not an assertion's shortened repr.
        pytest.fail(f"{script} failed: {json.dumps(result)}\n{err.decode()[-3000:]}")
    return result


class MemoryHashes:
    def __init__(self, objects: dict[str, bytes], piece_size: int = PIECE) -> None:
        self.objects = objects
        self.piece_size = piece_size
        self.lookups = 0

    async def piece_info(self, key: str) -> PieceInfo | None:
        self.lookups += 1
        data = self.objects.get(key)
        if data is None:
            return None
        pieces = tuple(
            hashlib.sha256(data[i : i + self.piece_size]).digest()
            for i in range(0, len(data), self.piece_size)
        )
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        return PieceInfo(size=len(data), piece_size=self.piece_size, sha256=pieces, etag=etag)


def object_bytes(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def make_config(
    *,
    tracker: dict[str, Any] | None = None,
    client_networks: list[str] | None = None,
    tokens: dict[str, Any] | None = None,
    members: list[dict[str, str]] | None = None,
) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "site": {"namespace": "isp-a", "name": "metro-1"},
            "store": {"maxBytes": 1 << 30},
            "origin": {"bucket": "media"},
            "tokens": tokens or {"enabled": False},
            "tracker": tracker or {},
            "clientNetworks": client_networks or [],
            "peering": {"members": members or []},
        }
    )


@pytest.fixture
def signing_key_file(tmp_path: Path) -> Path:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "manifest.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


CLIENTS_JS = Path(__file__).resolve().parents[2] / "clients" / "js"
PML_DIST = Path(__file__).with_name("js") / "node_modules" / "p2p-media-loader-core" / "dist"

PEER_PAGE = """<!doctype html><meta charset="utf-8"><title>edgefill peer</title>
<script type="module">
import { PeerAssist } from '/clients/edgefill-peer.mjs'
window.PeerAssist = PeerAssist
window.ready = true
</script>"""


async def _peer_page(request: web.Request) -> web.Response:
    return web.Response(text=PEER_PAGE, content_type="text/html")


def _object_view(objects: dict[str, bytes]) -> Callable[[web.Request], Any]:
    async def view(request: web.Request) -> web.Response:
        data = objects.get(request.match_info["key"])
        if data is None:
            raise web.HTTPNotFound()
        rng = request.http_range
        if rng.start is None and rng.stop is None:
            return web.Response(body=data, content_type="application/octet-stream")
        start = rng.start or 0
        stop = min(rng.stop if rng.stop is not None else len(data), len(data))
        return web.Response(
            status=206,
            body=data[start:stop],
            content_type="application/octet-stream",
            headers={"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"},
        )

    return view


@dataclass
class LiveTracker:
    url: str
    port: int
    service: TrackerService
    hashes: MemoryHashes


TrackerFactory = Callable[..., "AsyncIterator[LiveTracker]"]


@pytest.fixture
async def live_tracker(signing_key_file: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a node app with the tracker on 127.0.0.1 (ephemeral port); stop it after."""
    runners: list[web.AppRunner] = []

    async def start(
        objects: dict[str, bytes], host: str = "127.0.0.1", **config_args: Any
    ) -> LiveTracker:
        tracker_cfg = dict(config_args.pop("tracker", {}) or {})
        tracker_cfg.setdefault("manifestKeyFile", str(signing_key_file))
        config = make_config(tracker=tracker_cfg, **config_args)
        hashes = MemoryHashes(objects)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:  # the web seed URL needs the port up front
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        bracket = f"[{host}]" if ":" in host else host
        base = f"http://{bracket}:{port}"
        app = web.Application()
        register(app, config, hashes=hashes, node_name="node-0", web_seed_url=f"{base}/objects/")
        # Test-only stand-ins for the rest of the cache node: the web seed (Range
        # reads of the same bytes) and the client helper modules for browser pages.
        app.router.add_get("/objects/{key:.+}", _object_view(objects))
        app.router.add_static("/clients/", CLIENTS_JS)
        if PML_DIST.is_dir():
            app.router.add_static("/_test/pml/", PML_DIST)
        app.router.add_get("/_test/peer.html", _peer_page)
        runner = web.AppRunner(app, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        runners.append(runner)
        return LiveTracker(base, port, app[TRACKER], hashes)

    yield start
    for runner in runners:
        await runner.cleanup()
