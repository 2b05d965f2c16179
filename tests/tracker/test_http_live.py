"""HTTP tracker over real loopback sockets: spoofing, throttling, scrape, manifests, IPv6."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from cache_node import ring
from cache_node.tracker import register
from cache_node.tracker.addresses import parse_compact
from cache_node.tracker.bencode import decode
from cache_node.tracker.manifest import b64url_decode, verify_manifest, verify_piece

from .conftest import PIECE, MemoryHashes, make_config, object_bytes

pytestmark = pytest.mark.integration

KEY = "vod/title-7/seg-3.m4s"
DATA = object_bytes(KEY, 3 * PIECE + 1000)


def q(**params: str | bytes | int) -> str:
    return urllib.parse.urlencode(params)


async def get(
    url: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    if ":" in source or "//[" in url:
        return await raw_get6(url)
    conn = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn) as http,
        http.get(URL(url, encoded=True), headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.read(), resp.headers


async def raw_get6(url: str) -> tuple[int, bytes, Any]:
    """A plain HTTP/1.1 GET over IPv6 loopback (aiohttp's connector fails on ::1 here)."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection("::1", parts.port)
    target = parts.path + ("?" + parts.query if parts.query else "")
    writer.write(f"GET {target} HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, {}


async def manifest_of(base: str, key: str = KEY) -> dict[str, Any]:
    status, body, _ = await get(f"{base}/manifest/{key}")
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    status, keys_body, _ = await get(f"{base}/manifest-keys")
    jwk = json.loads(keys_body)["keys"][0]
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    return verify_manifest(doc, {jwk["kid"]: public})


def announce_url(base: str, info_hash: bytes, peer: int, port: int, **extra: Any) -> str:
    params: dict[str, Any] = {
        "info_hash": info_hash,
        "peer_id": b"-EF0001-" + peer.to_bytes(12, "big"),
        "port": port,
        "uploaded": 0,
        "downloaded": 0,
        "left": 100,
        "compact": 1,
        **extra,
    }
    return f"{base}/announce?{q(**params)}"


async def test_manifest_is_signed_and_matches_the_object(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    body = await manifest_of(t.url)
    assert body["size"] == len(DATA)
    for i in range(4):
        verify_piece(body, i, DATA[i * PIECE : (i + 1) * PIECE])
    status, payload, _ = await get(f"{t.url}/manifest/vod/absent.mp4")
    assert status == 404
    assert json.loads(payload)["error"] == "unknown_object"
    status, payload, _ = await get(f"{t.url}/manifest/vod/%2e%2e/secret")
    assert status == 400


async def test_spoofed_ip_and_forwarded_for_never_reach_peer_lists(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    ih = bytes.fromhex((await manifest_of(t.url))["infoHash"])
    spoof = {"X-Forwarded-For": "203.0.113.99"}
    status, body, _ = await get(
        announce_url(t.url, ih, 1, 6001, ip="198.51.100.7", event="started"), "127.0.0.2", spoof
    )
    assert status == 200, body
    status, body, _ = await get(announce_url(t.url, ih, 2, 6002, event="started"), "127.0.0.3")
    reply = decode(body)
    assert isinstance(reply, dict)
    assert reply[b"interval"] == 120
    assert (reply[b"complete"], reply[b"incomplete"]) == (0, 2)
    peers = parse_compact(reply[b"peers"], 4)  # type: ignore[arg-type]
    assert [(str(a), p) for a, p in peers] == [("127.0.0.2", 6001)]
    assert reply[b"peers6"] == b""
    # non-compact form names the same socket address
    status, body, _ = await get(announce_url(t.url, ih, 2, 6002, compact=0), "127.0.0.3")
    listed = decode(body)[b"peers"]  # type: ignore[index]
    assert listed == [
        {b"ip": b"127.0.0.2", b"port": 6001, b"peer id": b"-EF0001-" + bytes(11) + b"\x01"}
    ]


async def test_trusted_proxy_forwarded_for_is_used(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA}, tracker={"trustedProxies": ["127.0.0.5/32"]})
    ih = bytes.fromhex((await manifest_of(t.url))["infoHash"])
    xff = {"X-Forwarded-For": "6.6.6.6, 127.0.0.77"}  # client-written left part is ignored
    await get(announce_url(t.url, ih, 1, 7001), "127.0.0.5", xff)
    _, body, _ = await get(announce_url(t.url, ih, 2, 7002), "127.0.0.6", xff)
    peers = parse_compact(decode(body)[b"peers"], 4)  # type: ignore[arg-type,index]
    assert [str(a) for a, _ in peers] == ["127.0.0.77"]


def failure(body: bytes) -> bytes | None:
    """The BEP 3 ``failure reason`` of a tracker reply, None for a successful one."""
    reply = decode(body)
    assert isinstance(reply, dict), body
    reason = reply.get(b"failure reason")
    assert reason is None or isinstance(reason, bytes)
    return reason


async def test_flood_is_throttled_while_others_succeed(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA}, tracker={"announceBurst": 5, "announcesPerSecond": 0.5})
    ih = bytes.fromhex((await manifest_of(t.url))["infoHash"])
    replies = [await get(announce_url(t.url, ih, 1, 6001), "127.0.0.10") for _ in range(20)]
    assert {status for status, _, _ in replies} == {200}  # BEP 3: failures are 200 + reason
    reasons = [failure(body) for _, body, _ in replies]
    assert reasons.count(None) == 5
    assert sum(1 for r in reasons if r is not None and b"too many" in r) == 15
    status, body, headers = await get(announce_url(t.url, ih, 1, 6001), "127.0.0.10")
    assert status == 200
    assert int(headers["Retry-After"]) >= 1
    reply = decode(body)
    assert b"too many" in reply[b"failure reason"]  # type: ignore[index,operator]
    assert reply[b"retry in"] >= 1  # type: ignore[index,operator]  # BEP 31, in minutes
    for peer in range(3):
        status, body, _ = await get(announce_url(t.url, ih, 10 + peer, 6100), "127.0.0.11")
        assert status == 200
        assert failure(body) is None, body


async def test_unknown_or_malformed_announces_get_reasons(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    status, body, _ = await get(announce_url(t.url, b"\x07" * 20, 1, 6001))
    assert status == 200
    assert b"unknown info_hash" in (failure(body) or b"")
    status, body, _ = await get(f"{t.url}/announce?{q(info_hash=b'short', peer_id=b'x' * 20)}")
    assert status == 200
    reason = failure(body) or b""
    assert b"port" in reason or b"20 bytes" in reason
    status, body, _ = await get(announce_url(t.url, b"\x07" * 20, 1, 0))
    assert status == 200
    assert b"port" in (failure(body) or b"")
    # announcing with object=<object key> registers the swarm without fetching the manifest
    ih = bytes.fromhex((await manifest_of(t.url))["infoHash"])
    t2 = await live_tracker({KEY: DATA})
    status, body, _ = await get(announce_url(t2.url, ih, 1, 6001, object=KEY))
    assert status == 200, body


async def test_scrape(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    ih = bytes.fromhex((await manifest_of(t.url))["infoHash"])
    await get(announce_url(t.url, ih, 1, 6001, left=0, event="completed"), "127.0.0.2")
    await get(announce_url(t.url, ih, 2, 6002), "127.0.0.3")
    status, body, _ = await get(
        f"{t.url}/scrape?{q(info_hash=ih)}&info_hash=%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00"
    )
    assert status == 200
    files = decode(body)[b"files"]  # type: ignore[index]
    assert files == {ih: {b"complete": 1, b"incomplete": 1, b"downloaded": 1}}
    status, body, _ = await get(f"{t.url}/scrape")
    assert status == 200
    assert b"at least one info_hash" in (failure(body) or b"")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_peers_come_back_in_peers6(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA}, host="::1")
    ih = bytes.fromhex((await manifest_of(t.url, KEY))["infoHash"])
    await get(announce_url(t.url, ih, 1, 6001), "::1")
    _, body, _ = await get(announce_url(t.url, ih, 2, 6002), "::1")
    reply = decode(body)
    assert reply[b"peers"] == b""  # type: ignore[index]
    peers = parse_compact(reply[b"peers6"], 16)  # type: ignore[arg-type,index]
    assert [(str(a), p) for a, p in peers] == [("::1", 6001)]


async def test_swarms_live_on_their_owner(live_tracker: Any) -> None:
    """Manifests point at the swarm's owner (then the next member); other nodes redirect."""
    members = [{"name": f"node-{i}", "peerUrl": f"http://node-{i}:8081"} for i in range(4)]
    urls = {m["name"]: f"https://{m['name']}.edge.example" for m in members}
    # pick an object this node (node-0) does not own, and one it owns
    names = [m["name"] for m in members]
    foreign = next(
        f"vod/x{i}.ts" for i in range(100) if ring.rank(f"vod/x{i}.ts", names)[0] != "node-0"
    )
    local = next(
        f"vod/x{i}.ts" for i in range(100) if ring.rank(f"vod/x{i}.ts", names)[0] == "node-0"
    )
    objects = {foreign: DATA, local: DATA}
    t = await live_tracker(objects, members=members, tracker={"memberClientUrls": urls})
    body = await manifest_of(t.url, foreign)
    owner, fallback = ring.rank(foreign, names)[:2]
    query = urllib.parse.urlencode({"object": foreign})
    assert body["announceList"] == [
        [f"wss://{owner}.edge.example/announce?{query}", f"{urls[owner]}/announce?{query}"],
        [f"wss://{fallback}.edge.example/announce?{query}", f"{urls[fallback]}/announce?{query}"],
    ]
    assert body["announce"] == body["announceList"][0][0]
    ih = bytes.fromhex(body["infoHash"])
    status, _, headers = await get(announce_url(t.url, ih, 1, 6001))  # known from the manifest
    assert status == 307
    location = headers["Location"]
    assert location.startswith(f"{urls[owner]}/announce?")
    redirected = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert redirected["object"] == [foreign]
    assert t.service.registry.get(ih) is None  # nothing stored on the non-owner
    ih_local = bytes.fromhex((await manifest_of(t.url, local))["infoHash"])
    status, body, _ = await get(announce_url(t.url, ih_local, 1, 6001))
    assert status == 200
    assert failure(body) is None


async def test_websocket_sockets_close_going_away_on_shutdown(signing_key_file: Path) -> None:
    """A node that stops closes tracker sockets with 1001 so clients re-announce elsewhere."""
    app = web.Application()
    register(
        app,
        make_config(tracker={"manifestKeyFile": str(signing_key_file)}),
        hashes=MemoryHashes({KEY: DATA}),
        node_name="node-0",
        web_seed_url="http://127.0.0.1/",
    )
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/announce")
        await ws.send_json({"action": "scrape", "info_hash": "x" * 20})
        reply = await ws.receive_json()
        assert reply["action"] == "scrape"
        assert reply["files"] == {}  # unknown swarms are not described
        await runner.cleanup()
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1001
