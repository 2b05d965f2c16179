from __future__ import annotations

import ipaddress
import random

import pytest

from cache_node.tracker.addresses import Locality, parse_networks
from cache_node.tracker.swarms import (
    AnnounceRejectedError,
    AnnounceRequest,
    Event,
    SwarmRegistry,
    Transport,
)

IH = b"\x01" * 20


def registry(**kw: object) -> SwarmRegistry:
    args: dict[str, object] = {
        "max_swarms": 100,
        "max_peers_per_swarm": 1000,
        "peer_ttl": 100.0,
        "locality": Locality(parse_networks(["10.0.0.0/8", "2001:db8::/32"])),
        "rng": random.Random(7),
    }
    args.update(kw)
    return SwarmRegistry(**args)  # type: ignore[arg-type]


def req(
    n: int,
    addr: str,
    *,
    event: Event = Event.STARTED,
    left: int | None = 100,
    numwant: int = 50,
    info_hash: bytes = IH,
    uploaded: int = 0,
    downloaded: int = 0,
    transport: Transport = Transport.HTTP,
) -> AnnounceRequest:
    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=n.to_bytes(20, "big"),
        addr=ipaddress.ip_address(addr),
        port=6881,
        uploaded=uploaded,
        downloaded=downloaded,
        left=left,
        event=event,
        numwant=numwant,
        transport=transport,
    )


def test_locality_tiers_come_first() -> None:
    reg = registry()
    reg.announce(req(1, "192.0.2.10"), "k", 0)  # outside client networks
    reg.announce(req(2, "10.9.9.9"), "k", 0)  # same client network, other /24
    reg.announce(req(3, "10.1.2.77"), "k", 0)  # same /24 as the requester
    reg.announce(req(4, "2001:db8::5"), "k", 0)  # another client network
    out = reg.announce(req(9, "10.1.2.3"), "k", 0)
    assert [int.from_bytes(p.peer_id, "big") for p in out.peers] == [3, 2, 4, 1]


def test_numwant_caps_from_nearest_tier() -> None:
    reg = registry()
    for i in range(10):
        reg.announce(req(100 + i, f"192.0.2.{i + 1}"), "k", 0)
    reg.announce(req(1, "10.1.2.50"), "k", 0)
    out = reg.announce(req(9, "10.1.2.3", numwant=3), "k", 0)
    assert len(out.peers) == 3
    assert out.peers[0].peer_id == (1).to_bytes(20, "big")


def test_requester_never_gets_itself_and_seeders_skip_seeders() -> None:
    reg = registry()
    reg.announce(req(1, "10.0.0.1", left=0), "k", 0)
    reg.announce(req(2, "10.0.0.2", left=50), "k", 0)
    out = reg.announce(req(3, "10.0.0.3", left=0), "k", 0)
    assert [p.peer_id[-1] for p in out.peers] == [2]
    assert (out.complete, out.incomplete) == (2, 1)


def test_http_and_webrtc_peers_do_not_mix() -> None:
    reg = registry()
    reg.announce(req(1, "10.0.0.1", transport=Transport.WS), "k", 0)
    out = reg.announce(req(2, "10.0.0.2"), "k", 0)
    assert out.peers == []


def test_stopped_removes_and_counts_bytes() -> None:
    reg = registry()
    reg.announce(req(1, "10.0.0.1"), "k", 0)
    out = reg.announce(
        req(1, "10.0.0.1", event=Event.STOPPED, uploaded=500, downloaded=800), "k", 1
    )
    assert out.left_swarm
    assert (out.uploaded_delta, out.downloaded_delta) == (500, 800)
    assert len(reg) == 0  # empty swarms are dropped
    assert reg.peer_counts[Transport.HTTP] == 0


def test_same_peer_id_from_another_address_cannot_stop_a_peer() -> None:
    reg = registry()
    reg.announce(req(1, "10.0.0.1"), "k", 0)
    reg.announce(req(1, "10.0.0.66", event=Event.STOPPED), "k", 0)
    swarm = reg.get(IH)
    assert swarm is not None
    assert len(swarm.peers) == 1


def test_completed_counts_downloads_once() -> None:
    reg = registry()
    reg.announce(req(1, "10.0.0.1"), "k", 0)
    out = reg.announce(req(1, "10.0.0.1", event=Event.COMPLETED, left=0), "k", 1)
    out = reg.announce(req(1, "10.0.0.1", event=Event.UPDATE, left=0), "k", 2)
    stats = reg.scrape(IH)
    assert stats is not None
    assert (stats.complete, stats.incomplete, stats.downloaded) == (1, 0, 1)
    assert out.complete == 1


def test_ttl_expiry_on_announce_and_sweep() -> None:
    reg = registry(peer_ttl=100.0)
    reg.announce(req(1, "10.0.0.1"), "k", 0)
    reg.announce(req(2, "10.0.0.2"), "k", 50)
    out = reg.announce(req(3, "10.0.0.3"), "k", 120)  # peer 1 is silent for 120 s
    assert [p.peer_id[-1] for p in out.peers] == [2]
    assert reg.sweep(1000) == 2
    assert len(reg) == 0


def test_full_swarm_evicts_least_recently_seen() -> None:
    reg = registry(max_peers_per_swarm=3)
    for i in range(1, 4):
        reg.announce(req(i, f"10.0.0.{i}"), "k", i)
    reg.announce(req(1, "10.0.0.1"), "k", 10)  # refresh 1: now 2 is the oldest
    reg.announce(req(4, "10.0.0.4"), "k", 11)
    swarm = reg.get(IH)
    assert swarm is not None
    assert sorted(p.peer_id[-1] for p in swarm.peers.values()) == [1, 3, 4]
    assert reg.evicted == 1


def test_swarm_count_is_capped() -> None:
    reg = registry(max_swarms=2)
    reg.announce(req(1, "10.0.0.1", info_hash=b"a" * 20), "a", 0)
    reg.announce(req(1, "10.0.0.1", info_hash=b"b" * 20), "b", 0)
    with pytest.raises(AnnounceRejectedError) as err:
        reg.announce(req(1, "10.0.0.1", info_hash=b"c" * 20), "c", 0)
    assert err.value.reason == "swarm_limit"


def test_counter_resets_are_not_counted_as_traffic() -> None:
    reg = registry()
    reg.announce(req(1, "10.0.0.1", uploaded=1000, downloaded=1000), "k", 0)
    out = reg.announce(req(1, "10.0.0.1", event=Event.UPDATE, uploaded=10), "k", 1)
    assert (out.uploaded_delta, out.downloaded_delta) == (0, 0)
    out = reg.announce(req(1, "10.0.0.1", event=Event.UPDATE, uploaded=50), "k", 2)
    assert out.uploaded_delta == 40


def test_unknown_event_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown event"):
        Event.parse("exploded")
    assert Event.parse(None) is Event.UPDATE
    assert Event.parse("empty") is Event.UPDATE


def test_large_swarms_keep_locality_order_through_the_index() -> None:
    reg = registry()
    # 300 peers outside the client networks, 100 in another client network,
    # 20 in the requester's network and 5 in its /24.
    n = 0
    for i in range(300):
        n += 1
        reg.announce(req(n, f"192.0.{i // 250}.{i % 250 + 1}"), "k", 0)
    for i in range(100):
        n += 1
        reg.announce(req(n, f"2001:db8::{i + 1:x}"), "k", 0)
    for i in range(20):
        n += 1
        reg.announce(req(n, f"10.7.{i}.1"), "k", 0)
    for i in range(5):
        n += 1
        reg.announce(req(n, f"10.1.2.{i + 100}"), "k", 0)
    swarm = reg.get(IH)
    assert swarm is not None
    assert swarm.groups is not None  # large swarms select through the locality index
    out = reg.announce(req(9999, "10.1.2.3", numwant=50), "k", 0)
    got = [ipaddress.ip_address(p.packed) for p in out.peers]
    assert len(got) == len(set(got)) == 50
    assert all(str(a).startswith("10.1.2.") for a in got[:5])
    assert all(str(a).startswith("10.") for a in got[5:25])
    assert all(a.version == 6 for a in got[25:50])
    # removal keeps the index consistent
    for p in list(swarm.peers.values())[:200]:
        reg.announce(
            req(
                int.from_bytes(p.peer_id, "big"),
                str(ipaddress.ip_address(p.packed)),
                event=Event.STOPPED,
            ),
            "k",
            1,
        )
    total = sum(len(g) for g in swarm.groups.by_net.values())
    assert total == len(swarm.peers) == 226


def test_draws_cover_the_whole_pool() -> None:
    """The stride walk is a permutation: asking for everything returns everything."""
    reg = registry()
    for i in range(97):
        reg.announce(req(i + 1, f"192.0.2.{i + 1}"), "k", 0)
    out = reg.announce(req(500, "198.51.100.1", numwant=200), "k", 0)
    assert len({p.peer_id for p in out.peers}) == 97
