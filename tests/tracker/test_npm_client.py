"""Unmodified npm ``bittorrent-tracker`` clients (webtorrent's tracker client) announce over
WebSocket to our tracker, receive each other's WebRTC offers and answers through it, and
open a data channel between them (werift supplies WebRTC in Node; see js/webrtc-shim.mjs).

Needs Node 18+ and ``npm ci --ignore-scripts`` in tests/tracker/js.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from cache_node.tracker.manifest import swarm_id

from .conftest import object_bytes

pytestmark = pytest.mark.integration

JS = Path(__file__).with_name("js")
KEY = "vod/title-3/seg-2.m4s"


def node_or_fail() -> str:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "bittorrent-tracker").is_dir():
        pytest.fail("needs node and `npm ci --ignore-scripts` in tests/tracker/js")
    return node


async def run_clients(
    announce: str, info_hash: str, count: int, deadline: int = 40
) -> tuple[int, list[Any]]:
    proc = await asyncio.create_subprocess_exec(
        node_or_fail(),
        "--import",
        "./register.mjs",
        "ws-peers.mjs",
        announce,
        info_hash,
        str(count),
        str(deadline),
        cwd=JS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the npm client script did not finish")
    lines = []
    for raw in out.decode().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            lines.append({"text": raw})
    return proc.returncode or 0, lines


async def test_bittorrent_tracker_clients_find_each_other(live_tracker: Any) -> None:
    t = await live_tracker({KEY: object_bytes(KEY, 40_000)})
    info = await t.hashes.piece_info(KEY)
    assert info is not None
    ih = swarm_id(KEY, info.etag)
    ws_url = (
        t.url.replace("http://", "ws://") + "/announce?" + urllib.parse.urlencode({"object": KEY})
    )
    code, lines = await run_clients(ws_url, ih.hex(), 2)
    assert code == 0, lines
    result = lines[-1]
    assert result["result"] == "ok"
    greetings = sorted(r for s in result["state"] for r in s["received"])
    assert greetings == ["hello from client 0", "hello from client 1"]
    # the clients' own view of the swarm came from our announce replies
    assert any(line.get("update", {}).get("incomplete") == 2 for line in lines)
    # and the tracker relayed at least one offer and one answer
    from prometheus_client import REGISTRY

    assert (
        REGISTRY.get_sample_value("edgefill_tracker_relayed_total", {"kind": "answer"}) or 0
    ) >= 1
    # after the clients leave, their peers are gone (socket close acts as "stopped")
    for _ in range(150):  # the machine may be busy: allow the close to arrive
        if t.service.registry.get(ih) is None:
            break
        await asyncio.sleep(0.1)
    assert t.service.registry.get(ih) is None


async def test_unknown_swarm_fails_for_the_npm_client(live_tracker: Any) -> None:
    t = await live_tracker({KEY: object_bytes(KEY, 40_000)})
    ws_url = t.url.replace("http://", "ws://") + "/announce"
    code, lines = await run_clients(ws_url, "ab" * 20, 1, deadline=3)
    assert code == 1
    warnings = [line["warning"] for line in lines if "warning" in line]
    assert any("unknown info_hash" in w for w in warnings), lines


async def test_client_chosen_info_hash_with_object_hint(live_tracker: Any) -> None:
    """Like a WebTorrent .torrent of the object: its own info-hash, object= in the URL."""
    t = await live_tracker({KEY: object_bytes(KEY, 40_000)})
    ws_url = (
        t.url.replace("http://", "ws://") + "/announce?" + urllib.parse.urlencode({"object": KEY})
    )
    code, lines = await run_clients(ws_url, "cd" * 20, 2)
    assert code == 0, lines
    assert lines[-1]["result"] == "ok"
