"""Browser tier: unmodified p2p-media-loader (npm p2p-media-loader-core, the engine of its
hls.js and Shaka integrations) in two headless Chromium pages, through our tracker.

The object's pieces are the stream's segments (byte ranges of the web seed URL).
p2p-media-loader derives its own info-hash from its swarm id; its tracker URL is the
manifest's ``announce`` (which names the object with ``object=``), so the tracker
admits that hash as a swarm of the served object. Every segment, from HTTP or a peer,
passes ``validateP2PSegment`` / ``validateHTTPSegment`` against the signed manifest.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import PIECE, object_bytes, run_browser_script

pytestmark = pytest.mark.browser

KEY = "vod/pml/stream.ts"
DATA = object_bytes(KEY, 6 * PIECE + 777)


async def test_p2p_media_loader_viewers_share_segments(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    result = await run_browser_script("pml-peers.mjs", t.url, KEY, "p2p-media-loader-core")
    segments = -(-len(DATA) // PIECE)
    viewer, seeder = result["viewer"], result["seeder"]
    assert seeder["http"] == len(DATA)
    assert seeder["verified"] == segments
    assert viewer["p2p"] > 0  # segments came from the other page over WebRTC
    # Every byte arrived at least once; p2p-media-loader also reports the chunks of a
    # transfer it aborted and retried elsewhere (seen under load), so not exactly once.
    assert viewer["http"] + viewer["p2p"] >= len(DATA)
    assert viewer["verified"] == segments  # every segment checked against the manifest
    assert viewer["rejected"] == 0
