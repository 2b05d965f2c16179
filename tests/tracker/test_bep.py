"""Conformance of the HTTP tracker to the BitTorrent specifications, over real sockets.

Each test names the BEP it checks: BEP 3 (announce and its reply), BEP 23 (compact peers
and the dictionary model when ``compact=0``), BEP 7 (IPv6), BEP 31 (``retry in``), BEP 48
(scrape), BEP 12 (announce-list) and BEP 19 (url-list web seeds) in the signed manifest.
"""

from __future__ import annotations

import socket
import urllib.parse
from typing import Any

import pytest

from cache_node.tracker.addresses import parse_compact
from cache_node.tracker.bencode import decode

from .conftest import PIECE, object_bytes
from .test_http_live import announce_url, failure, get, manifest_of, q

pytestmark = pytest.mark.integration

KEY = "vod/bep/seg-1.m4s"
DATA = object_bytes(KEY, 2 * PIECE + 17)


def reply_of(body: bytes) -> dict[bytes, Any]:
    reply = decode(body)
    assert isinstance(reply, dict), body
    return reply


async def started(t: Any) -> bytes:
    return bytes.fromhex((await manifest_of(t.url, KEY))["infoHash"])


async def test_bep3_reply_keys(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA}, tracker={"announceIntervalSeconds": 100})
    ih = await started(t)
    status, body, headers = await get(announce_url(t.url, ih, 1, 6001, event="started"))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    reply = reply_of(body)
    assert reply[b"interval"] == 100
    assert reply[b"min interval"] == 25
    assert 1 <= reply[b"min interval"] <= reply[b"interval"]
    assert (reply[b"complete"], reply[b"incomplete"]) == (0, 1)
    assert reply[b"tracker id"] == b"node-0"
    assert reply[b"peers"] == b""
    # a client sending the tracker id back (and a BitTorrent session key) is fine
    status, body, _ = await get(
        announce_url(t.url, ih, 1, 6001, trackerid="node-0", key="a1b2c3d4")
    )
    assert failure(body) is None


async def test_bep3_failures_are_bencoded_with_200(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    ih = await started(t)
    cases = {
        "no port": f"{t.url}/announce?{q(info_hash=ih, peer_id=b'-EF0001-000000000001')}",
        "short info_hash": announce_url(t.url, b"short", 1, 6001),
        "unknown swarm": announce_url(t.url, b"\x09" * 20, 1, 6001),
        "bad event": announce_url(t.url, ih, 1, 6001, event="exploded"),
        "negative left": announce_url(t.url, ih, 1, 6001, left=-1),
    }
    for name, url in cases.items():
        status, body, _ = await get(url)
        assert status == 200, name
        reason = failure(body)
        assert reason, name
        assert set(reply_of(body)) <= {b"failure reason", b"retry in"}, name


async def test_bep3_events_and_counts(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    ih = await started(t)
    await get(announce_url(t.url, ih, 1, 6001, event="started"), "127.0.0.2")
    await get(announce_url(t.url, ih, 2, 6002, event="started"), "127.0.0.3")
    _, body, _ = await get(announce_url(t.url, ih, 1, 6001, event="completed", left=0), "127.0.0.2")
    assert (reply_of(body)[b"complete"], reply_of(body)[b"incomplete"]) == (1, 1)
    _, body, _ = await get(announce_url(t.url, ih, 2, 6002, event="stopped"), "127.0.0.3")
    assert (reply_of(body)[b"complete"], reply_of(body)[b"incomplete"]) == (1, 0)
    # a seeder gets no seeders back; a new leecher gets the seeder
    _, body, _ = await get(announce_url(t.url, ih, 3, 6003), "127.0.0.4")
    peers = parse_compact(reply_of(body)[b"peers"], 4)
    assert [(str(a), p) for a, p in peers] == [("127.0.0.2", 6001)]


async def test_bep3_numwant_is_honoured_and_capped(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA}, tracker={"maxNumwant": 3})
    ih = await started(t)
    for peer in range(6):
        await get(announce_url(t.url, ih, peer, 6000 + peer), f"127.0.1.{peer + 1}")
    _, body, _ = await get(announce_url(t.url, ih, 99, 7000, numwant=2), "127.0.2.1")
    assert len(reply_of(body)[b"peers"]) == 2 * 6
    _, body, _ = await get(announce_url(t.url, ih, 99, 7000, numwant=500), "127.0.2.1")
    assert len(reply_of(body)[b"peers"]) == 3 * 6
    _, body, _ = await get(announce_url(t.url, ih, 99, 7000, numwant=0), "127.0.2.1")
    assert reply_of(body)[b"peers"] == b""


async def test_bep23_compact_is_the_default_and_compact0_gives_dictionaries(
    live_tracker: Any,
) -> None:
    t = await live_tracker({KEY: DATA})
    ih = await started(t)
    await get(announce_url(t.url, ih, 1, 6001), "127.0.0.2")
    params = {
        "info_hash": ih,
        "peer_id": b"-EF0001-000000000002",
        "port": 6002,
        "left": 5,
    }
    _, body, _ = await get(f"{t.url}/announce?{q(**params)}", "127.0.0.3")  # no compact=
    assert reply_of(body)[b"peers"] == bytes([127, 0, 0, 2]) + (6001).to_bytes(2, "big")
    _, body, _ = await get(f"{t.url}/announce?{q(**params, compact=0)}", "127.0.0.3")
    assert reply_of(body)[b"peers"] == [
        {b"ip": b"127.0.0.2", b"port": 6001, b"peer id": b"-EF0001-" + bytes(11) + b"\x01"}
    ]
    assert b"peers6" not in reply_of(body)  # the dictionary model lists both families
    _, body, _ = await get(f"{t.url}/announce?{q(**params, compact=0, no_peer_id=1)}", "127.0.0.3")
    assert reply_of(body)[b"peers"] == [{b"ip": b"127.0.0.2", b"port": 6001}]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_bep7_ipv6_and_ipv6_param_is_not_believed(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA}, host="::1")
    ih = await started(t)
    # ipv6= and ip= name addresses the packets did not come from: never listed
    await get(announce_url(t.url, ih, 1, 6001, ipv6="2001:db8::66", ip="198.51.100.1"), "::1")
    _, body, _ = await get(announce_url(t.url, ih, 2, 6002), "::1")
    reply = reply_of(body)
    assert reply[b"peers"] == b""
    assert [(str(a), p) for a, p in parse_compact(reply[b"peers6"], 16)] == [("::1", 6001)]
    _, body, _ = await get(announce_url(t.url, ih, 2, 6002, compact=0), "::1")
    assert reply_of(body)[b"peers"] == [
        {b"ip": b"::1", b"port": 6001, b"peer id": b"-EF0001-" + bytes(11) + b"\x01"}
    ]


async def test_bep48_scrape(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    ih = await started(t)
    await get(announce_url(t.url, ih, 1, 6001, event="completed", left=0), "127.0.0.2")
    await get(announce_url(t.url, ih, 2, 6002), "127.0.0.3")
    # a second swarm of the same object, client-chosen hash admitted under object=
    other = b"\x42" * 20
    await get(announce_url(t.url, other, 3, 6003, object=KEY), "127.0.0.4")
    unknown = b"\x00" * 20
    query = "&".join(q(info_hash=h) for h in (ih, other, unknown))
    status, body, _ = await get(f"{t.url}/scrape?{query}")
    assert status == 200
    reply = reply_of(body)
    assert reply[b"files"] == {
        ih: {b"complete": 1, b"downloaded": 1, b"incomplete": 1},
        other: {b"complete": 0, b"downloaded": 0, b"incomplete": 1},
    }
    assert reply[b"flags"] == {b"min_request_interval": 120}


async def test_bep48_scrape_url_from_the_announce_url(live_tracker: Any) -> None:
    """The scrape URL is the announce URL with its last ``announce`` segment replaced."""
    t = await live_tracker({KEY: DATA})
    manifest = await manifest_of(t.url, KEY)
    ih = bytes.fromhex(manifest["infoHash"])
    http_announce = next(u for tier in manifest["announceList"] for u in tier if u[:4] == "http")
    parts = urllib.parse.urlsplit(http_announce)
    head, _, last = parts.path.rpartition("/")
    assert last == "announce"
    scrape = urllib.parse.urlunsplit(parts._replace(path=f"{head}/scrape"))
    await get(announce_url(t.url, ih, 1, 6001), "127.0.0.2")
    status, body, _ = await get(f"{scrape}&{q(info_hash=ih)}")
    assert status == 200
    assert reply_of(body)[b"files"] == {ih: {b"complete": 0, b"downloaded": 0, b"incomplete": 1}}


async def test_bep12_announce_list_and_bep19_url_list(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    manifest = await manifest_of(t.url, KEY)
    tiers = manifest["announceList"]
    assert isinstance(tiers, list)
    assert tiers
    assert all(isinstance(tier, list) and tier for tier in tiers)
    assert manifest["announce"] == tiers[0][0]  # BEP 12: the first tier's first URL
    ws_url, http_url = tiers[0]
    assert ws_url.startswith("ws://")
    assert http_url.startswith("http://")
    # BEP 19: a url-list entry naming a file is the file's own URL, served with ranges
    assert manifest["urlList"] == [f"{t.url}/objects/{KEY}"]
    status, body, _ = await get(manifest["urlList"][0])
    assert status == 200
    assert body == DATA
