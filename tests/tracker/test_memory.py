"""Memory bounds: 100,000 random info-hashes must leave the node within +50 MiB.

Measured with tracemalloc (every Python allocation the tracker makes), not
wall-clock or RSS noise.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import tracemalloc
from pathlib import Path

from cache_node.tracker.manifest import ManifestSigner, load_signing_key
from cache_node.tracker.service import TrackerService, WsPeerSession
from cache_node.tracker.swarms import AnnounceRequest, Event, Transport

from .conftest import MemoryHashes, make_config

MiB = 1 << 20
N = 100_000


def build(signing_key_file: Path) -> TrackerService:
    return TrackerService(
        make_config(tracker={"announcesPerSecond": 10_000, "announceBurst": 100_000}),
        hashes=MemoryHashes({}),
        node_name="node-0",
        web_seed_url="http://edge/",
        gate=_Open(),
        signer=ManifestSigner(load_signing_key(signing_key_file)),
    )


class _Open:
    def check(self, token: str | None, key: str) -> tuple[int, str] | None:
        return None


async def test_random_info_hash_flood_stays_within_budget(signing_key_file: Path) -> None:
    svc = build(signing_key_file)
    sent: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(N):
            # a new source and peer per message, like a botnet sweep
            session = WsPeerSession(
                ipaddress.IPv4Address(0x0A000000 + i), lambda m: sent.append(len(m))
            )
            await svc.ws_message(
                session,
                {
                    "action": "announce",
                    "info_hash": os.urandom(20).decode("latin-1"),
                    "peer_id": os.urandom(20).decode("latin-1"),
                    "offers": [],
                },
            )
            svc.ws_closed(session)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(sent) == N  # every one got a failure reason
    assert len(svc.registry) == 0
    assert grown < 50 * MiB, f"grew {grown / MiB:.1f} MiB"


LIVE = 20_000
PER_SWARM_BUDGET = 1024


def test_live_swarm_cost_is_bounded(signing_key_file: Path) -> None:
    """Admitted swarms (known object, one peer each) cost under 1 KiB apiece, index included.

    Measured about 800 bytes, so the default ``maxSwarms`` of 100,000 full
    swarms costs about 80 MiB at most; the random-hash flood above costs nothing.
    """
    svc = build(signing_key_file)
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(LIVE):
            ih = i.to_bytes(20, "big")
            svc.index.add(ih, f"k{i}")
            svc.registry.announce(
                AnnounceRequest(
                    info_hash=ih,
                    peer_id=(i * 7).to_bytes(20, "big"),
                    addr=ipaddress.IPv4Address(0x0A000000 + i),
                    port=6881,
                    uploaded=0,
                    downloaded=0,
                    left=1,
                    event=Event.STARTED,
                    numwant=0,
                    transport=Transport.HTTP,
                ),
                f"k{i}",
                0.0,
            )
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(svc.registry) == LIVE
    assert grown / LIVE < PER_SWARM_BUDGET, f"{grown / LIVE:.0f} bytes per swarm"
