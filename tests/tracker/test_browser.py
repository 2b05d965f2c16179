"""Browser tier: two headless Chromium pages exchange pieces over WebRTC via our tracker.

Page A fetches the object from the web seed (it is alone in the swarm) and seeds;
page B fetches the same object with peer assist. Every piece on both pages is
checked against the signed manifest by clients/js/edgefill-verify.mjs.

Needs Debian's ``chromium`` and ``npm ci --ignore-scripts`` in tests/tracker/js
(playwright-core drives the system browser through ``executablePath``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from .conftest import PIECE, object_bytes, run_browser_script

pytestmark = pytest.mark.browser

KEY = "vod/title-5/seg-8.m4s"
DATA = object_bytes(KEY, 6 * PIECE + 1234)


async def test_two_pages_share_pieces_over_webrtc(live_tracker: Any) -> None:
    t = await live_tracker({KEY: DATA})
    result = await run_browser_script("browser-peers.mjs", t.url, KEY, "playwright-core")
    leecher = result["leecher"]
    pieces = -(-len(DATA) // PIECE)
    assert leecher["pieces"] == pieces
    assert leecher["stats"]["verified"] == pieces  # every piece checked against the manifest
    assert leecher["stats"]["fromPeers"] > 0  # bytes came from the other page over WebRTC
    assert leecher["stats"]["rejected"] == 0
    assert leecher["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert result["seeder"]["stats"]["fromHttp"] == len(DATA)  # the seed came from the node
    assert result["seederAfter"]["uploaded"] == leecher["stats"]["fromPeers"]
