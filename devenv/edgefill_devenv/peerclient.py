"""Peer-assisted end-user clients for the demo workload.

What a p2p-media-loader or WebTorrent player does, minus WebRTC: each client
is a process-local peer on its own loopback address that

1. fetches the object's signed piece-hash manifest from a cache node of its
   site and verifies the Ed25519 signature against ``/manifest-keys``;
2. announces to the site's tracker over BEP 3 HTTP (compact peers, its own
   token, ``object=<key>``) and gets the swarm's peers, nearest first;
3. takes each piece from a peer when one has it, checks its SHA-256 against
   the manifest, and falls back to the cache node (the BEP 19 web seed, a
   Range request) for pieces no peer supplies or a peer supplied wrongly;
4. serves the pieces it holds to other peers, and reports uploaded and
   downloaded bytes on its ``completed`` announce, which is how the tracker
   computes peer efficiency (P2P bytes / all bytes).

Peers exchange pieces over plain HTTP on loopback (``GET /piece/<infohash>/<n>``)
instead of WebRTC data channels; the browser tier of the tests covers real
WebRTC peers. Everything else (tracker, manifests, tokens, web seed) is the
production path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cache_node.tracker import bencode


class PeerAssistError(Exception):
    pass


class TrackerRefusedError(PeerAssistError):
    """The tracker answered with a BEP 3 failure reason (e.g. its per-source rate limit)."""


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_manifest(signed: dict[str, Any], jwks: dict[str, Any]) -> dict[str, Any]:
    """The manifest body, after checking its signature against the served keys."""
    if signed.get("alg") != "Ed25519":
        raise PeerAssistError(f"unexpected manifest algorithm {signed.get('alg')!r}")
    key = next((k for k in jwks.get("keys", []) if k.get("kid") == signed.get("keyId")), None)
    if key is None:
        raise PeerAssistError(f"no public key {signed.get('keyId')!r} at /manifest-keys")
    Ed25519PublicKey.from_public_bytes(_b64url(key["x"])).verify(
        _b64url(signed["signature"]), signed["manifest"].encode()
    )
    body: dict[str, Any] = json.loads(signed["manifest"])
    return body


def compact_peers(blob: bytes) -> list[tuple[str, int]]:
    """BEP 23 compact IPv4 peers."""
    out = []
    for i in range(0, len(blob) - len(blob) % 6, 6):
        ip = ".".join(str(b) for b in blob[i : i + 4])
        out.append((ip, int.from_bytes(blob[i + 4 : i + 6], "big")))
    return out


@dataclass
class PeerStats:
    p2p_bytes: int = 0
    seed_bytes: int = 0
    uploaded: int = 0
    bad_pieces: int = 0
    objects: int = 0
    # Announces the tracker refused (BEP 3 failure reason, e.g. the per-source
    # rate limit): playback goes on from the web seed, as real clients do.
    tracker_failures: int = 0


@dataclass
class PeerClient:
    """One end user: a piece server on ``ip`` and a downloader bound to ``ip``."""

    ip: str
    token: str
    peer_id: bytes = field(default_factory=lambda: b"-EF0001-" + os.urandom(6).hex().encode())
    port: int = 0
    pieces: dict[tuple[str, int], bytes] = field(default_factory=dict)
    stats: PeerStats = field(default_factory=PeerStats)
    _runner: web.AppRunner | None = None
    _http: aiohttp.ClientSession | None = None

    async def start(self) -> PeerClient:
        app = web.Application()
        app.router.add_get("/piece/{infohash}/{index}", self._serve_piece)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.ip, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        connector = aiohttp.TCPConnector(local_addr=(self.ip, 0), limit=16)
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60, sock_connect=3)
        )
        return self

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve_piece(self, request: web.Request) -> web.Response:
        data = self.pieces.get((request.match_info["infohash"], int(request.match_info["index"])))
        if data is None:
            raise web.HTTPNotFound(reason="piece not held")
        self.stats.uploaded += len(data)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _announce(
        self, url: str, manifest: dict[str, Any], event: str, left: int, downloaded: int
    ) -> list[tuple[str, int]]:
        assert self._http is not None
        # The manifest's announce URL may carry parameters of its own (object=...):
        # keep them and add ours, never a second copy of one.
        base, _, given = url.partition("?")
        present = {k for k, _ in urllib.parse.parse_qsl(given, keep_blank_values=True)}
        ours = {
            "info_hash": bytes.fromhex(manifest["infoHash"]),
            "peer_id": self.peer_id,
            "port": self.port,
            "uploaded": self.stats.uploaded,
            "downloaded": downloaded,
            "left": left,
            "compact": 1,
            "event": event,
            "numwant": 20,
            "object": manifest["key"],
            "token": self.token,
        }
        query = urllib.parse.urlencode({k: v for k, v in ours.items() if k not in present})
        full = f"{base}?{given}&{query}" if given else f"{base}?{query}"
        async with self._http.get(full) as resp:
            body = bencode.decode(await resp.read())
        if not isinstance(body, dict):
            raise PeerAssistError("tracker answered a non-dictionary")
        if b"failure reason" in body:
            raise TrackerRefusedError(f"tracker: {body[b'failure reason']!r}")
        peers = body.get(b"peers", b"")
        return [
            p
            for p in compact_peers(peers if isinstance(peers, bytes) else b"")
            if p != (self.ip, self.port)
        ]

    async def fetch(self, node_urls: list[str], key: str) -> bytes:
        """Download ``key`` with peer assist; returns the verified object."""
        assert self._http is not None
        signed: dict[str, Any] | None = None
        node = node_urls[0]
        for node in random.sample(node_urls, len(node_urls)):
            async with self._http.get(f"{node}/manifest/{key}", params={"token": self.token}) as r:
                if r.status == 200:
                    signed = await r.json()
                    break
        if signed is None:
            # No member holds it yet (a cold object): play it over plain HTTP, as
            # p2p-media-loader does for first segments; the node fills it on the way.
            async with self._http.get(f"{node}/{key}", params={"token": self.token}) as r:
                if r.status != 200:
                    raise PeerAssistError(f"{node}/{key} answered {r.status}")
                body = await r.read()
            self.stats.seed_bytes += len(body)
            self.stats.objects += 1
            return body
        async with self._http.get(f"{node}/manifest-keys") as r:
            manifest = verify_manifest(signed, await r.json())
        infohash, size, piece = manifest["infoHash"], manifest["size"], manifest["pieceSize"]
        hashes: list[str] = manifest["pieces"]
        announce = manifest.get("announce") or f"{node}/announce"
        peers = await self._announce_or_none(announce, manifest, "started", size, 0)
        seed = manifest["urlList"][0]  # BEP 19: the object's own URL on the cache node
        parts: list[bytes] = []
        for index, digest in enumerate(hashes):
            start, end = index * piece, min(size, (index + 1) * piece)
            data = await self._from_peers(peers, infohash, index, digest)
            if data is None:
                headers = {"Range": f"bytes={start}-{end - 1}"}
                async with self._http.get(seed, params={"token": self.token}, headers=headers) as r:
                    if r.status != 206:
                        raise PeerAssistError(f"web seed answered {r.status} for {key}")
                    data = await r.read()
                if hashlib.sha256(data).hexdigest() != digest:
                    raise PeerAssistError(f"web seed piece {index} of {key} fails its hash")
                self.stats.seed_bytes += len(data)
            self.pieces[(infohash, index)] = data
            parts.append(data)
        self.stats.objects += 1
        await self._announce_or_none(announce, manifest, "completed", 0, size)
        return b"".join(parts)

    async def _announce_or_none(
        self, url: str, manifest: dict[str, Any], event: str, left: int, downloaded: int
    ) -> list[tuple[str, int]]:
        """Announce; a tracker that refuses (failure reason) leaves the web seed alone.

        A peer-assist client never fails playback because of its tracker: it
        counts the refusal and takes every piece from the cache node instead.
        """
        try:
            return await self._announce(url, manifest, event, left, downloaded)
        except TrackerRefusedError:
            self.stats.tracker_failures += 1
            return []

    async def _from_peers(
        self, peers: list[tuple[str, int]], infohash: str, index: int, digest: str
    ) -> bytes | None:
        assert self._http is not None
        for ip, port in random.sample(peers, min(3, len(peers))):
            try:
                async with self._http.get(f"http://{ip}:{port}/piece/{infohash}/{index}") as r:
                    if r.status != 200:
                        continue
                    data = await r.read()
            except (aiohttp.ClientError, TimeoutError):
                continue
            if hashlib.sha256(data).hexdigest() == digest:
                self.stats.p2p_bytes += len(data)
                return data
            self.stats.bad_pieces += 1  # never kept, never shared
        return None
