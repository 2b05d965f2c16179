"""A native BitTorrent client we did not write (libtorrent 2.x, Python bindings) announces
over HTTP, gets compact peers back from our tracker, and connects to the peer it was given.

libtorrent comes from PyPI (``pip install libtorrent``; Debian's ``python3-libtorrent``
also works). Each client joins the object's swarm by info-hash, as from a magnet link,
with the tracker URL carrying ``object=<key>`` so the tracker can check the object is served.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from cache_node.tracker.manifest import swarm_id
from cache_node.tracker.swarms import Transport

from .conftest import object_bytes

lt = pytest.importorskip("libtorrent", reason="pip install libtorrent (test dependency)")

pytestmark = pytest.mark.integration

KEY = "vod/title-9/seg-1.m4s"
DATA = object_bytes(KEY, 64 * 1024)


def session(iface: str) -> Any:
    return lt.session(
        {
            "listen_interfaces": f"{iface}:0",
            "outgoing_interfaces": iface,
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "announce_to_all_tiers": True,
            "alert_mask": lt.alert.category_t.tracker_notification
            | lt.alert.category_t.error_notification
            | lt.alert.category_t.peer_notification,
            "allow_multiple_connections_per_ip": True,
        }
    )


async def wait_reply(ses: Any, seconds: float = 20.0) -> Any:
    """The next tracker_reply_alert (or fail with the tracker's error text)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.tracker_reply_alert):
                return alert
            if isinstance(alert, lt.tracker_error_alert):
                pytest.fail(f"tracker error seen by libtorrent: {alert.message()}")
        await asyncio.sleep(0.05)
    pytest.fail("libtorrent got no tracker reply")


async def test_libtorrent_announces_and_finds_its_peer(live_tracker: Any, tmp_path: Path) -> None:
    t = await live_tracker({KEY: DATA})
    info = await t.hashes.piece_info(KEY)
    assert info is not None
    ih = swarm_id(KEY, info.etag).hex()
    tracker = f"{t.url}/announce?{urllib.parse.urlencode({'object': KEY})}"
    magnet = f"magnet:?xt=urn:btih:{ih}&tr={urllib.parse.quote(tracker, safe='')}"

    sessions = [session("127.0.0.21"), session("127.0.0.22")]
    handles = []
    for i, ses in enumerate(sessions):
        params = lt.parse_magnet_uri(magnet)
        params.save_path = str(tmp_path / f"client{i}")
        handles.append(ses.add_torrent(params))
        reply = await wait_reply(ses)
        assert reply.num_peers == i  # the first is alone, the second gets the first

    swarm = t.service.registry.get(bytes.fromhex(ih))
    assert swarm is not None
    addrs = sorted(p.packed for p in swarm.peers.values() if p.transport is Transport.HTTP)
    assert addrs == [bytes([127, 0, 0, 21]), bytes([127, 0, 0, 22])]
    # the second client connects to the peer the tracker handed it
    listen_port = sessions[0].listen_port()
    deadline = time.monotonic() + 20
    seen: set[tuple[str, int]] = set()
    while time.monotonic() < deadline and ("127.0.0.21", listen_port) not in seen:
        seen = {tuple(p.ip) for p in handles[1].get_peer_info()}  # type: ignore[misc]
        await asyncio.sleep(0.1)
    assert ("127.0.0.21", listen_port) in seen
    for ses, h in zip(sessions, handles, strict=True):
        ses.remove_torrent(h)
