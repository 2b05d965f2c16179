"""Owner routing across the members of a site, over real loopback sockets.

Three tracker nodes on distinct loopback addresses form one site (a peer secret, static
membership). A swarm lives on the owner of its object by the content ranking; clients of
that swarm connected to other members reach it through member links (WebSocket relay,
HTTP forwarding), and when the owner dies the next-ranked member takes the swarm over.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from cache_node import ring
from cache_node.tracker import TRACKER, StaticMembership, TrackerService, register
from cache_node.tracker.addresses import parse_compact
from cache_node.tracker.bencode import decode
from cache_node.tracker.manifest import PieceInfo, swarm_id
from cache_node.tracker.relay import LINK_PATH, MEMBER_HEADER, client_base_from_peer_url

from .conftest import MemoryHashes, make_config, object_bytes
from .test_npm_client import run_clients

pytestmark = pytest.mark.integration

SECRET = b"site-peer-secret-0123456789"
NAMES = ["cache-0", "cache-1", "cache-2"]
KEY = "vod/routed/seg-1.m4s"
DATA = object_bytes(KEY, 40_000)
RANKED = ring.rank(KEY, NAMES)  # owner first, then the fallback order


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class FillFromOrigin:
    """A real ObjectFiller over an in-memory "origin": copies the object into the node's
    hashes (what the loader does with the store) and counts fills."""

    def __init__(self, origin: dict[str, bytes], hashes: MemoryHashes) -> None:
        self.origin = origin
        self.hashes = hashes
        self.fills = 0

    async def fill(self, key: str) -> PieceInfo | None:
        self.fills += 1
        data = self.origin.get(key)
        if data is None:
            return None
        self.hashes.objects[key] = data
        return await self.hashes.piece_info(key)


@dataclass
class Member:
    name: str
    host: str
    port: int
    runner: web.AppRunner | None
    service: TrackerService
    hashes: MemoryHashes
    filler: FillFromOrigin

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None


@pytest.fixture
async def site(signing_key_file: Path) -> AsyncIterator[Any]:
    started: list[Member] = []

    async def start(
        holders: set[str],
        *,
        member_urls: bool = False,
        secret: bytes | None = SECRET,
        **tracker_settings: Any,
    ) -> dict[str, Member]:
        hosts = {name: f"127.0.0.{20 + i}" for i, name in enumerate(NAMES)}
        ports = {name: free_port(host) for name, host in hosts.items()}
        urls = {name: f"http://{hosts[name]}:{ports[name]}" for name in NAMES}
        members: dict[str, Member] = {}
        for name in NAMES:
            tracker: dict[str, Any] = {
                "manifestKeyFile": str(signing_key_file),
                **tracker_settings,
            }
            if member_urls:
                tracker["memberClientUrls"] = urls
            config = make_config(
                tracker=tracker,
                members=[{"name": n, "peerUrl": f"http://{hosts[n]}:1"} for n in NAMES],
            )
            hashes = MemoryHashes({KEY: DATA} if name in holders else {})
            filler = FillFromOrigin({KEY: DATA}, hashes)
            app = web.Application()
            register(
                app,
                config,
                hashes=hashes,
                node_name=name,
                web_seed_url=f"{urls[name]}/",
                membership=StaticMembership(name, urls, secret),
                filler=filler,
            )
            runner = web.AppRunner(app, shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, hosts[name], ports[name]).start()
            member = Member(name, hosts[name], ports[name], runner, app[TRACKER], hashes, filler)
            members[name] = member
            started.append(member)
        return members

    yield start
    for member in started:
        if member.runner is not None:
            await member.runner.cleanup()


async def the_info_hash() -> bytes:
    info = await MemoryHashes({KEY: DATA}).piece_info(KEY)
    assert info is not None
    return swarm_id(KEY, info.etag)


def announce_query(ih: bytes, peer: int, port: int, **extra: Any) -> str:
    return urllib.parse.urlencode(
        {
            "info_hash": ih,
            "peer_id": b"-EF0001-" + peer.to_bytes(12, "big"),
            "port": port,
            "uploaded": 0,
            "downloaded": 0,
            "left": 100,
            "compact": 1,
            "object": KEY,
            **extra,
        }
    )


async def http_get(url: str, source: str) -> tuple[int, bytes, Any]:
    conn = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn) as http,
        http.get(URL(url, encoded=True), allow_redirects=False) as resp,
    ):
        return resp.status, await resp.read(), resp.headers


def text(raw: bytes) -> str:
    return raw.decode("latin-1")


async def receive(ws: aiohttp.ClientWebSocketResponse, **match: Any) -> dict[str, Any]:
    """The next message that has every ``match`` key with that value (bounded wait)."""
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            data: dict[str, Any] = json.loads(msg.data)
            if all(data.get(k) == v for k, v in match.items()):
                return data


async def wait_for(predicate: Any) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_npm_clients_on_different_members_find_each_other(site: Any) -> None:
    """Unmodified bittorrent-tracker clients, each on a member that is not the owner, and
    which does not even hold the object: they meet in the owner's swarm."""
    owner, first, second = RANKED
    members = await site(holders={owner})
    ih = await the_info_hash()
    query = urllib.parse.urlencode({"object": KEY})
    urls = ",".join(f"{members[n].ws}/announce?{query}" for n in (first, second))
    code, lines = await run_clients(urls, ih.hex(), 2)
    assert code == 0, lines
    result = lines[-1]
    assert result["result"] == "ok"
    greetings = sorted(r for s in result["state"] for r in s["received"])
    assert greetings == ["hello from client 0", "hello from client 1"]
    # both clients were counted in one swarm: the owner's
    assert any(line.get("update", {}).get("incomplete") == 2 for line in lines), lines
    assert members[first].service.registry.get(ih) is None
    assert members[second].service.registry.get(ih) is None
    # the clients left: the owner forgets them once the members pass the closes on
    await wait_for(lambda: members[owner].service.registry.get(ih) is None)


async def test_npm_clients_meet_on_the_next_member_when_the_owner_is_down(site: Any) -> None:
    owner, first, second = RANKED
    members = await site(holders=set(NAMES))
    await members[owner].stop()
    ih = await the_info_hash()
    query = urllib.parse.urlencode({"object": KEY})
    urls = ",".join(f"{members[n].ws}/announce?{query}" for n in (first, second))
    code, lines = await run_clients(urls, ih.hex(), 2)
    assert code == 0, lines
    assert lines[-1]["result"] == "ok"
    assert any(line.get("update", {}).get("incomplete") == 2 for line in lines), lines


async def test_owner_loss_the_next_member_takes_over(site: Any) -> None:
    owner, fallback, third = RANKED
    members = await site(holders=set(NAMES))
    ih = await the_info_hash()
    peer_a, peer_b = b"-WW0001-aaaaaaaaaaaa", b"-WW0001-bbbbbbbbbbbb"
    query = urllib.parse.urlencode({"object": KEY})
    async with aiohttp.ClientSession() as http:
        # A joins through the third-ranked member: its membership is relayed to the owner.
        ws_a = await http.ws_connect(f"{members[third].ws}/announce?{query}")
        await ws_a.send_json(
            {
                "action": "announce",
                "info_hash": text(ih),
                "peer_id": text(peer_a),
                "event": "started",
                "left": 100,
                "numwant": 0,
                "offers": [],
            }
        )
        reply = await receive(ws_a, action="announce", interval=120)
        assert reply["incomplete"] == 1
        swarm = members[owner].service.registry.get(ih)
        assert swarm is not None
        assert peer_a in swarm.peers
        assert members[third].service.registry.get(ih) is None

        # The owner dies. Its links drop; the membership moves to the next-ranked member.
        await members[owner].stop()
        await wait_for(
            lambda: (
                (s := members[fallback].service.registry.get(ih)) is not None and peer_a in s.peers
            )
        )

        # B joins through another member with an offer: it reaches A, and A's answer B.
        entry = third if fallback != third else fallback
        ws_b = await http.ws_connect(f"{members[entry].ws}/announce?{query}")
        offer = {"type": "offer", "sdp": "v=0 offer-from-b"}
        await ws_b.send_json(
            {
                "action": "announce",
                "info_hash": text(ih),
                "peer_id": text(peer_b),
                "event": "started",
                "left": 100,
                "numwant": 1,
                "offers": [{"offer_id": "o" * 20, "offer": offer}],
            }
        )
        relayed = await receive(ws_a, offer=offer)
        assert relayed["peer_id"] == text(peer_b)
        assert relayed["offer_id"] == "o" * 20
        answer = {"type": "answer", "sdp": "v=0 answer-from-a"}
        await ws_a.send_json(
            {
                "action": "announce",
                "info_hash": text(ih),
                "peer_id": text(peer_a),
                "to_peer_id": text(peer_b),
                "offer_id": "o" * 20,
                "answer": answer,
            }
        )
        got = await receive(ws_b, answer=answer)
        assert got["peer_id"] == text(peer_a)
        swarm = members[fallback].service.registry.get(ih)
        assert swarm is not None
        assert set(swarm.peers) == {peer_a, peer_b}
        await ws_a.close()
        await ws_b.close()
    await wait_for(lambda: members[fallback].service.registry.get(ih) is None)


async def test_http_announces_are_forwarded_to_the_owner(site: Any) -> None:
    """Without public member URLs, a member forwards HTTP announces to the owner."""
    owner, first, second = RANKED
    members = await site(holders={owner})
    ih = await the_info_hash()
    status, body, _ = await http_get(
        f"{members[first].url}/announce?{announce_query(ih, 1, 6001)}", "127.0.0.5"
    )
    assert status == 200, body
    status, body, _ = await http_get(
        f"{members[second].url}/announce?{announce_query(ih, 2, 6002)}", "127.0.0.6"
    )
    reply = decode(body)
    assert isinstance(reply, dict)
    assert b"failure reason" not in reply, reply
    assert reply[b"tracker id"] == owner.encode()
    assert reply[b"incomplete"] == 2
    peers = parse_compact(reply[b"peers"], 4)  # type: ignore[arg-type]
    assert [(str(a), p) for a, p in peers] == [("127.0.0.5", 6001)]  # the client's address
    assert members[first].service.registry.get(ih) is None
    # a scrape on a member that is not the owner answers with the owner's counts
    scrape = urllib.parse.urlencode({"info_hash": ih, "object": KEY})
    status, body, _ = await http_get(f"{members[second].url}/scrape?{scrape}", "127.0.0.7")
    assert decode(body) == {
        b"files": {ih: {b"complete": 0, b"downloaded": 0, b"incomplete": 2}},
        b"flags": {b"min_request_interval": 120},
    }


async def test_with_member_urls_http_announces_are_redirected(site: Any) -> None:
    owner, first, _ = RANKED
    members = await site(holders={owner}, member_urls=True)
    ih = await the_info_hash()
    status, _, headers = await http_get(
        f"{members[first].url}/announce?{announce_query(ih, 1, 6001)}", "127.0.0.5"
    )
    assert status == 307
    assert headers["Location"].startswith(f"{members[owner].url}/announce?")
    # the owner down: the redirect goes to the next-ranked member instead
    await members[owner].stop()
    members[first].service.links.mark_down(owner)
    status, _, headers = await http_get(
        f"{members[first].url}/announce?{announce_query(ih, 1, 6001)}", "127.0.0.5"
    )
    if RANKED[1] == first:
        assert status == 200
    else:
        assert status == 307
        assert headers["Location"].startswith(f"{members[RANKED[1]].url}/announce?")


async def test_manifest_on_a_member_that_does_not_hold_the_object(site: Any) -> None:
    owner, first, _ = RANKED
    members = await site(holders={owner})
    # no public member URLs: the member fills the object (owner, then origin) and answers
    status, body, _ = await http_get(f"{members[first].url}/manifest/{KEY}", "127.0.0.5")
    assert status == 200, body
    assert members[first].filler.fills == 1
    manifest = json.loads(json.loads(body)["manifest"])
    assert manifest["key"] == KEY
    assert manifest["size"] == len(DATA)
    # an object the origin does not have is still a 404
    status, body, _ = await http_get(f"{members[first].url}/manifest/vod/absent.ts", "127.0.0.5")
    assert status == 404, body


async def test_manifest_redirects_to_the_owner_with_member_urls(site: Any) -> None:
    owner, first, _ = RANKED
    members = await site(holders={owner}, member_urls=True)
    url = f"{members[first].url}/manifest/{KEY}?token=abc"
    status, _, headers = await http_get(url, "127.0.0.5")
    assert status == 307
    assert headers["Location"] == f"{members[owner].url}/manifest/{KEY}?token=abc"
    assert members[first].filler.fills == 0


async def test_member_links_need_the_site_secret(site: Any) -> None:
    members = await site(holders=set(NAMES))
    target = members[NAMES[0]]
    async with aiohttp.ClientSession() as http:
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer wrong-secret-wrong-secret", MEMBER_HEADER: NAMES[1]}, 401),
            ({"Authorization": "Bearer " + SECRET.decode(), MEMBER_HEADER: "stranger"}, 403),
        ):
            async with http.get(f"{target.url}{LINK_PATH}", headers=headers) as resp:
                assert resp.status == status


async def test_without_a_secret_every_member_serves_its_own_swarms(site: Any) -> None:
    owner, first, _ = RANKED
    members = await site(holders=set(NAMES), secret=None)
    ih = await the_info_hash()
    status, body, _ = await http_get(
        f"{members[first].url}/announce?{announce_query(ih, 1, 6001)}", "127.0.0.5"
    )
    assert status == 200
    assert b"failure reason" not in body
    assert members[first].service.registry.get(ih) is not None
    assert members[owner].service.registry.get(ih) is None


def test_client_base_from_peer_url() -> None:
    assert client_base_from_peer_url("http://cache-1.peers.ns.svc:8081", 8080) == (
        "http://cache-1.peers.ns.svc:8080"
    )
    assert client_base_from_peer_url("https://[2001:db8::1]:8081/", 443) == (
        "https://[2001:db8::1]:443"
    )


async def test_guessing_the_link_secret_is_throttled(site: Any) -> None:
    # a slow refill, so that no token comes back while the test runs
    members = await site(holders=set(NAMES), announcesPerSecond=0.001, announceBurst=10)
    target = members[NAMES[0]]
    wrong = {"Authorization": "Bearer not-the-secret-at-all", MEMBER_HEADER: NAMES[1]}
    statuses = []
    conn = aiohttp.TCPConnector(local_addr=("127.0.0.9", 0), force_close=True)
    async with aiohttp.ClientSession(connector=conn) as http:
        for _ in range(15):
            async with http.get(f"{target.url}{LINK_PATH}", headers=wrong) as resp:
                statuses.append(resp.status)
    assert statuses == [401] * 10 + [429] * 5
