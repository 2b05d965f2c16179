"""SIGKILL the node process during fills, ten times; it must never serve a partial object.

The node runs as a real process (``python -m cache_node``) on loopback; the
origin is the S3 test server behind the counting proxy, paced so that fills
are in flight when the kill lands. After every restart each object is either
served complete (verified against its pieces after the unclean shutdown) or
refetched; a client never receives a short or wrong body.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.origin_proxy import OriginProxy
from edgefill_devenv.s3 import S3Server, free_port

from .conftest import Bucket, KiB, make_bucket, node_config, until

pytestmark = pytest.mark.integration

KILLS = 10
KEYS_PER_ROUND = 3
SIZE = 96 * KiB


@contextmanager
def node_process(
    config_path: Path, log: Path, name: str = "n0"
) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFILL_S3_ENDPOINT"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cache_node", "--config", str(config_path), "--node-name", name],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


async def wait_ready(
    session: aiohttp.ClientSession, metrics: str, proc: subprocess.Popen[bytes]
) -> None:
    for _ in range(600):
        assert proc.poll() is None, "node exited during start"
        try:
            async with session.get(f"{metrics}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("node never became ready")


def _all_requested(proxy: OriginProxy, keys: list[str]) -> bool:
    return all(proxy.object_gets(k) > 0 for k in keys)


async def _fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes] | None:
    try:
        async with session.get(url) as resp:
            return resp.status, await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        return None


async def test_sigkill_during_fills_never_serves_partial(
    s3_server: S3Server, tmp_path: Path
) -> None:
    keys = [f"crash/r{r}/obj-{i}.bin" for r in range(KILLS) for i in range(KEYS_PER_ROUND)]
    bucket: Bucket = make_bucket(s3_server, dict.fromkeys(keys, SIZE))
    async with OriginProxy(upstream=s3_server.endpoint_url, bucket=bucket.name) as proxy:
        client_port, metrics_port, peer_port = free_port(), free_port(), free_port()
        cfg = node_config(tmp_path / "store", proxy.endpoint_url, bucket.name)
        doc = json.loads(cfg.model_dump_json(by_alias=True))
        doc["listen"].update(
            {
                "host": "127.0.0.1",
                "clientPort": client_port,
                "metricsPort": metrics_port,
                "peerPort": peer_port,
            }
        )
        config_path = tmp_path / "node.json"
        config_path.write_text(json.dumps(doc))
        base = f"http://127.0.0.1:{client_port}"
        metrics = f"http://127.0.0.1:{metrics_port}"
        log = tmp_path / "node.log"
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for round_ in range(KILLS):
                round_keys = keys[round_ * KEYS_PER_ROUND : (round_ + 1) * KEYS_PER_ROUND]
                proxy.pace_seconds = 0.02  # ~0.8 MB/s per fill: the kill lands mid-body
                with node_process(config_path, log) as proc:
                    await wait_ready(session, metrics, proc)
                    # Everything committed in earlier rounds is served whole after the crash.
                    for key in keys[: round_ * KEYS_PER_ROUND]:
                        got = await _fetch(session, f"{base}/{key}")
                        assert got is not None, (round_, key)
                        assert got[0] == 200, (round_, key, got)
                        assert got[1] == object_bytes(key, SIZE), (round_, key)
                    tasks = [
                        asyncio.create_task(_fetch(session, f"{base}/{k}")) for k in round_keys
                    ]
                    await until(functools.partial(_all_requested, proxy, round_keys), "fills")
                    await asyncio.sleep(0.1 * (round_ % 3))  # vary how far the fills got
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    for key, done in zip(round_keys, await asyncio.gather(*tasks), strict=True):
                        # A client of a killed fill sees an error or a full body, never a short one.
                        if done is not None and done[0] == 200:
                            assert done[1] == object_bytes(key, SIZE)
                proxy.pace_seconds = 0.0
                with node_process(config_path, log) as proc:
                    await wait_ready(session, metrics, proc)
                    for key in round_keys:
                        got = await _fetch(session, f"{base}/{key}")
                        assert got is not None, (round_, key)
                        assert got[0] == 200, (round_, key, got)
                        assert got[1] == object_bytes(key, SIZE), (round_, key)
                    for _ in range(500):  # let the refills commit before the next kill
                        async with session.get(f"{metrics}/status") as resp:
                            status = await resp.json()
                        if status["fillsInProgress"] == 0:
                            break
                        await asyncio.sleep(0.01)
                    assert status["ready"] is True
                    assert status["fillsInProgress"] == 0
                    proc.send_signal(signal.SIGKILL)  # the next start is unclean too
        # One GET per key for the killed fill, at most one more to refetch it after restart.
        odd = {k: n for k in keys if not 1 <= (n := proxy.object_gets(k)) <= 2}
    assert not odd, odd
    # The node logs structlog JSON with stable keys, one document per line.
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        doc = json.loads(line)
        assert {"event", "level", "timestamp", "node", "site"} <= doc.keys(), doc
