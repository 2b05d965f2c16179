"""The tracker core without sockets: WebSocket relaying, gates, unknown swarms, metrics."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cache_node.tracker.manifest import ManifestSigner, load_signing_key, swarm_id
from cache_node.tracker.service import (
    HttpAnnounce,
    RejectedError,
    TrackerService,
    WsPeerSession,
)
from cache_node.tracker.swarms import Event

from .conftest import MemoryHashes, make_config, object_bytes

KEY = "vod/title-1/seg-1.m4s"
OBJECTS = {KEY: object_bytes(KEY, 40_000)}


class CountingGate:
    """Allows tokens equal to 'ok:<key>'; counts checks."""

    def __init__(self) -> None:
        self.checks = 0

    def check(self, token: str | None, key: str) -> tuple[int, str] | None:
        self.checks += 1
        if token is None:
            return 401, "a token is required"
        return None if token == f"ok:{key}" else (403, "token scope does not cover this path")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def service(
    signing_key_file: Path, gate: Any = None, **tracker: Any
) -> tuple[TrackerService, MemoryHashes, Clock]:
    hashes = MemoryHashes(dict(OBJECTS))
    clock = Clock()
    svc = TrackerService(
        make_config(tracker=tracker, client_networks=["10.0.0.0/8"]),
        hashes=hashes,
        node_name="node-0",
        web_seed_url="http://edge.example/",
        gate=gate or _Open(),
        signer=ManifestSigner(load_signing_key(signing_key_file)),
        clock=clock,
    )
    return svc, hashes, clock


class _Open:
    def check(self, token: str | None, key: str) -> tuple[int, str] | None:
        return None


def ws_session(addr: str, **kw: Any) -> tuple[WsPeerSession, list[dict[str, Any]]]:
    inbox: list[dict[str, Any]] = []
    return WsPeerSession(ipaddress.ip_address(addr), inbox.append, **kw), inbox


def ih() -> str:
    info = OBJECTS[KEY]
    import hashlib

    etag = '"' + hashlib.md5(info).hexdigest() + '"'
    return swarm_id(KEY, etag).decode("latin-1")


def offer(i: int) -> dict[str, Any]:
    return {"offer": {"type": "offer", "sdp": f"v=0 offer {i}"}, "offer_id": f"{i:020d}"}


async def test_ws_offers_relay_and_answers_come_back(signing_key_file: Path) -> None:
    svc, _, _ = service(signing_key_file)
    await svc.manifest(KEY, None)  # registers the swarm id
    a, a_in = ws_session("10.0.0.1")
    b, b_in = ws_session("10.0.0.2")
    pa, pb = "A" * 20, "B" * 20
    await svc.ws_message(
        a,
        {
            "action": "announce",
            "info_hash": ih(),
            "peer_id": pa,
            "event": "started",
            "left": 100,
            "offers": [offer(1)],
        },
    )
    assert a_in[-1]["action"] == "announce"
    assert a_in[-1]["incomplete"] == 1
    assert a_in[-1]["interval"] == svc.interval
    await svc.ws_message(
        b,
        {
            "action": "announce",
            "info_hash": ih(),
            "peer_id": pb,
            "event": "started",
            "left": 100,
            "offers": [offer(2), offer(3)],
        },
    )
    relayed = [m for m in a_in if "offer" in m]
    assert relayed == [
        {
            "action": "announce",
            "offer": offer(2)["offer"],
            "offer_id": offer(2)["offer_id"],
            "peer_id": pb,
            "info_hash": ih(),
        }
    ]
    answer = {"type": "answer", "sdp": "v=0 answer"}
    await svc.ws_message(
        a,
        {
            "action": "announce",
            "info_hash": ih(),
            "peer_id": pa,
            "to_peer_id": pb,
            "answer": answer,
            "offer_id": offer(2)["offer_id"],
        },
    )
    assert b_in[-1] == {
        "action": "announce",
        "answer": answer,
        "offer_id": offer(2)["offer_id"],
        "peer_id": pa,
        "info_hash": ih(),
    }
    # scrape over the socket
    await svc.ws_message(a, {"action": "scrape", "info_hash": ih()})
    assert a_in[-1]["files"][ih()] == {"complete": 0, "incomplete": 2, "downloaded": 0}
    # closing b's socket removes it
    svc.ws_closed(b)
    await svc.ws_message(a, {"action": "scrape", "info_hash": [ih()]})
    assert a_in[-1]["files"][ih()]["incomplete"] == 1


async def test_ws_peer_id_cannot_be_hijacked(signing_key_file: Path) -> None:
    svc, _, _ = service(signing_key_file)
    await svc.manifest(KEY, None)
    a, _ = ws_session("10.0.0.1")
    evil, evil_in = ws_session("10.0.0.66")
    await svc.ws_message(
        a, {"action": "announce", "info_hash": ih(), "peer_id": "A" * 20, "offers": []}
    )
    await svc.ws_message(
        evil, {"action": "announce", "info_hash": ih(), "peer_id": "A" * 20, "offers": []}
    )
    assert "in use" in evil_in[-1]["failure reason"]
    # nor answer on its behalf to a peer
    await svc.ws_message(
        evil,
        {
            "action": "announce",
            "info_hash": ih(),
            "peer_id": "A" * 20,
            "to_peer_id": "A" * 20,
            "offer_id": "x" * 20,
            "answer": {"type": "answer", "sdp": "s"},
        },
    )
    assert "announce to the swarm" in evil_in[-1]["failure reason"]


async def test_ws_malformed_messages_get_failure_reasons(signing_key_file: Path) -> None:
    svc, _, _ = service(signing_key_file)
    s, inbox = ws_session("10.0.0.1")
    for bad, needle in [
        ([], "JSON object"),
        ({"action": "dance"}, "unknown action"),
        ({"action": "announce", "info_hash": "short", "peer_id": "A" * 20}, "info_hash"),
        ({"action": "announce", "info_hash": "\u0100" * 20, "peer_id": "A" * 20}, "U+00FF"),
        (
            {
                "action": "announce",
                "info_hash": "I" * 20,
                "peer_id": "A" * 20,
                "offers": [{"offer": "nope"}],
            },
            "offers",
        ),
        (
            {"action": "announce", "info_hash": "I" * 20, "peer_id": "A" * 20, "event": "bogus"},
            "unknown event",
        ),
        ({"action": "scrape", "info_hash": []}, "1 to 100"),
    ]:
        await svc.ws_message(s, bad)
        assert needle in inbox[-1]["failure reason"], bad


async def test_unknown_swarms_are_refused_without_growth(signing_key_file: Path) -> None:
    svc, hashes, _ = service(signing_key_file)
    s, inbox = ws_session("10.0.0.1")
    await svc.ws_message(s, {"action": "announce", "info_hash": "Z" * 20, "peer_id": "A" * 20})
    assert "unknown info_hash" in inbox[-1]["failure reason"]
    assert len(svc.registry) == 0
    assert hashes.lookups == 0  # no hint, no store lookup


async def test_key_hint_registers_a_served_object_only(signing_key_file: Path) -> None:
    svc, _, _ = service(signing_key_file)
    s, inbox = ws_session("10.0.0.1", key_hints=(KEY,))
    await svc.ws_message(s, {"action": "announce", "info_hash": ih(), "peer_id": "A" * 20})
    assert inbox[-1]["action"] == "announce"
    assert "failure reason" not in inbox[-1]
    s2, inbox2 = ws_session("10.0.0.2", key_hints=("vod/not-served",))
    await svc.ws_message(s2, {"action": "announce", "info_hash": "Q" * 20, "peer_id": "B" * 20})
    assert "unknown info_hash" in inbox2[-1]["failure reason"]


async def test_tokens_gate_announces_and_manifests(signing_key_file: Path) -> None:
    gate = CountingGate()
    svc, _, _ = service(signing_key_file, gate=gate)
    with pytest.raises(RejectedError) as err:
        await svc.manifest(KEY, None)
    assert err.value.status == 401
    await svc.manifest(KEY, f"ok:{KEY}")
    s, inbox = ws_session("10.0.0.1", token="ok:vod/other")
    await svc.ws_message(s, {"action": "announce", "info_hash": ih(), "peer_id": "A" * 20})
    assert "scope" in inbox[-1]["failure reason"]
    ann = HttpAnnounce(
        info_hash=ih().encode("latin-1"),
        peer_id=b"P" * 20,
        port=6881,
        uploaded=0,
        downloaded=0,
        left=5,
        event=Event.STARTED,
        numwant=None,
        compact=True,
        no_peer_id=False,
        key_hint=None,
        token=f"ok:{KEY}",
    )
    assert b"failure" not in await svc.http_announce(ann, ipaddress.ip_address("10.0.0.9"))
    # scrape says nothing about swarms the token does not cover
    assert svc.scrape_files([ih().encode("latin-1")], "ok:vod/other") == {}


async def test_rate_limit_per_source(signing_key_file: Path) -> None:
    svc, _, clock = service(signing_key_file, announceBurst=3, announcesPerSecond=1.0)
    await svc.manifest(KEY, None)
    flood, flood_in = ws_session("10.0.0.66")
    calm, calm_in = ws_session("10.0.0.7")
    for _ in range(10):
        await svc.ws_message(flood, {"action": "announce", "info_hash": ih(), "peer_id": "F" * 20})
    assert sum("failure reason" in m for m in flood_in) == 7
    assert flood_in[-1]["retry in"] >= 1
    await svc.ws_message(calm, {"action": "announce", "info_hash": ih(), "peer_id": "C" * 20})
    assert "failure reason" not in calm_in[-1]
    clock.now += 1.0
    await svc.ws_message(flood, {"action": "announce", "info_hash": ih(), "peer_id": "F" * 20})
    assert "failure reason" not in flood_in[-1]


async def test_metrics_count_announces_rejects_and_bytes(signing_key_file: Path) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    svc, _, _ = service(signing_key_file)
    await svc.manifest(KEY, None)
    before_ann = value("edgefill_tracker_announces_total", transport="ws", event="started")
    before_rej = value("edgefill_tracker_rejects_total", reason="unknown_swarm")
    before_up = value("edgefill_tracker_client_uploaded_bytes_total")
    s, _ = ws_session("10.0.0.1")
    await svc.ws_message(
        s,
        {
            "action": "announce",
            "info_hash": ih(),
            "peer_id": "A" * 20,
            "event": "started",
            "uploaded": 0,
            "downloaded": 0,
        },
    )
    await svc.ws_message(
        s,
        {
            "action": "announce",
            "info_hash": ih(),
            "peer_id": "A" * 20,
            "uploaded": 3000,
            "downloaded": 4000,
        },
    )
    await svc.ws_message(s, {"action": "announce", "info_hash": "Z" * 20, "peer_id": "A" * 20})
    assert value("edgefill_tracker_announces_total", transport="ws", event="started") == (
        before_ann + 1
    )
    assert value("edgefill_tracker_rejects_total", reason="unknown_swarm") == before_rej + 1
    assert value("edgefill_tracker_client_uploaded_bytes_total") == before_up + 3000
    assert value("edgefill_tracker_peers", transport="ws") == 1
    assert value("edgefill_tracker_swarms") == 1
    assert 0 < value("edgefill_tracker_peer_efficiency_ratio") <= 1


async def test_manifest_needs_a_signing_key_and_a_served_object(signing_key_file: Path) -> None:
    svc, _, _ = service(signing_key_file)
    with pytest.raises(RejectedError) as err:
        await svc.manifest("vod/missing", None)
    assert err.value.status == 404
    svc.signer = None
    with pytest.raises(RejectedError) as err:
        await svc.manifest(KEY, None)
    assert err.value.status == 503


async def test_client_derived_info_hashes_join_a_served_object(signing_key_file: Path) -> None:
    """A WebTorrent .torrent or p2p-media-loader swarm id, named with object=<key>."""
    from cache_node.tracker.service import MAX_FOREIGN_SWARMS_PER_OBJECT

    gate = CountingGate()
    svc, _, _ = service(signing_key_file, gate=gate)
    s, inbox = ws_session("10.0.0.1", key_hints=(KEY,), token=f"ok:{KEY}")
    hashes = [bytes([i]) * 20 for i in range(1, MAX_FOREIGN_SWARMS_PER_OBJECT + 2)]
    for ih_bytes in hashes:
        await svc.ws_message(
            s, {"action": "announce", "info_hash": ih_bytes.decode("latin-1"), "peer_id": "A" * 20}
        )
        assert "failure reason" not in inbox[-1], inbox[-1]
    assert svc.index.lookup(hashes[-1]) == KEY
    assert svc.index.lookup(hashes[0]) is None  # the oldest of the object's extra hashes
    # without a token for the object, no extra swarm
    s2, inbox2 = ws_session("10.0.0.2", key_hints=(KEY,), token="ok:vod/other")
    await svc.ws_message(s2, {"action": "announce", "info_hash": "N" * 20, "peer_id": "B" * 20})
    assert "scope" in inbox2[-1]["failure reason"]
    assert svc.index.lookup(b"N" * 20) is None


async def test_compact_reply_is_the_canonical_bencoding(signing_key_file: Path) -> None:
    """The hand-written compact reply equals the generic encoder's output, both families."""
    from cache_node.tracker import bencode
    from cache_node.tracker.swarms import AnnounceOutcome, Peer, Transport

    svc, _, _ = service(signing_key_file)
    v6 = ipaddress.ip_address("2001:db8::7").packed
    peers = [
        Peer(b"p" * 20 + bytes([10, 0, 0, 1]), 6881, Transport.HTTP, None, -1),
        Peer(b"q" * 20 + v6, 51413, Transport.HTTP, None, -1),
        Peer(b"r" * 20 + bytes([192, 0, 2, 9]), 1, Transport.HTTP, None, -1),
    ]
    outcome = AnnounceOutcome(complete=3, incomplete=12, peers=peers)
    expected = bencode.encode(
        {
            "interval": 120,
            "min interval": 30,
            "complete": 3,
            "incomplete": 12,
            "tracker id": "node-0",
            "peers": bytes([10, 0, 0, 1, 0x1A, 0xE1, 192, 0, 2, 9, 0, 1]),
            "peers6": v6 + (51413).to_bytes(2, "big"),
        }
    )
    assert svc.http_body(outcome, compact=True, no_peer_id=False) == expected
    assert bencode.decode(svc.http_body(AnnounceOutcome(0, 0), compact=True, no_peer_id=True)) == {
        b"complete": 0,
        b"incomplete": 0,
        b"interval": 120,
        b"min interval": 30,
        b"peers": b"",
        b"peers6": b"",
        b"tracker id": b"node-0",
    }
