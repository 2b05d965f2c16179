"""The tracker's core: plain methods that take parsed requests and return data.

The aiohttp views (``views.py``) only unpack requests and write responses; all
policy lives here so it is tested without sockets:

1. The source address comes from the socket (or trusted proxies' X-Forwarded-For).
2. The source's token bucket is charged before any other work.
3. The info-hash must name an object this site serves (``resolve``), and the
   announce must carry a token valid for that object when tokens are on.
4. The swarm registry applies the announce and picks peers, nearest first.

WebSocket messages follow webtorrent/bittorrent-tracker: binary ids (info_hash,
peer_id, offer_id, to_peer_id) travel as 20-character strings, one character
per byte; offers from an announce are relayed one per selected peer, and an
answer is relayed to ``to_peer_id`` only.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from cache_node import ring
from cache_node.config import NodeConfig
from cache_node.tracker import bencode, metrics
from cache_node.tracker.addresses import (
    AddressError,
    IPAddress,
    Locality,
    client_address,
    compact_peers,
    parse_networks,
)
from cache_node.tracker.manifest import (
    ManifestSigner,
    PieceHashSource,
    SwarmIndex,
    load_signing_key,
    swarm_id,
)
from cache_node.tracker.ratelimit import RateLimiter
from cache_node.tracker.swarms import (
    AnnounceOutcome,
    AnnounceRejectedError,
    AnnounceRequest,
    Event,
    Peer,
    SwarmRegistry,
    Transport,
)

log = structlog.get_logger("edgefill.tracker")

MAX_WS_SWARMS_PER_CONNECTION = 1000
ANSWER_COST = 0.25
MAX_FOREIGN_SWARMS_PER_OBJECT = 16  # answers follow offers we relayed; cheap but not free


class RejectedError(Exception):
    """A refused request: HTTP status, stable metric reason and a message for people."""

    def __init__(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class RedirectError(Exception):
    """This swarm lives on another member: send the client there (HTTP 307)."""

    def __init__(self, base: str, key: str) -> None:
        super().__init__(base)
        self.base = base
        self.key = key


class TokenGate(Protocol):
    """Content tokens applied to announces: None if allowed, else (status, reason)."""

    def check(self, token: str | None, key: str) -> tuple[int, str] | None: ...


class OpenGate:
    """The gate when ``tokens.enabled`` is false: everything the site serves is open."""

    def check(self, token: str | None, key: str) -> tuple[int, str] | None:
        return None


class Session(Protocol):
    """A WebSocket connection as the core sees it."""

    closed: bool

    def send(self, message: dict[str, Any]) -> None: ...


@dataclass(eq=False)
class WsPeerSession:
    """State of one WebSocket connection: its address, bound peer id, swarms joined.

    ``send`` must not block (the view puts messages on a bounded queue), so a
    slow peer never stalls the announcer whose offer is being relayed.
    """

    addr: IPAddress
    sender: Callable[[dict[str, Any]], None]
    token: str | None = None
    key_hints: tuple[str, ...] = ()
    # (info_hash, peer_id) memberships: the npm client multiplexes several
    # torrents, each with its own peer id, over one socket per tracker URL.
    swarms: set[tuple[bytes, bytes]] = field(default_factory=set)
    closed: bool = False

    def send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.sender(message)

    def detach(self, info_hash: bytes, peer_id: bytes) -> None:
        self.swarms.discard((info_hash, peer_id))


@dataclass(frozen=True, slots=True)
class HttpAnnounce:
    """A parsed BEP 3 announce (the view decodes the raw query string)."""

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int | None
    event: Event
    numwant: int | None
    compact: bool
    no_peer_id: bool
    key_hint: str | None
    token: str | None


def _binary(value: object, name: str) -> bytes:
    """A 20-byte id from its WebSocket form (a 20-character latin-1 string)."""
    if not isinstance(value, str) or len(value) != 20:
        raise RejectedError(400, "malformed", f"{name} must be a 20-character binary string")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise RejectedError(400, "malformed", f"{name} has characters above U+00FF") from None


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _count(value: object, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RejectedError(400, "malformed", f"{name} must be a non-negative number")
    try:
        number = int(value)
    except ValueError:
        raise RejectedError(400, "malformed", f"{name} must be a non-negative number") from None
    if number < 0:
        raise RejectedError(400, "malformed", f"{name} must be a non-negative number")
    return number


class TrackerService:
    def __init__(
        self,
        config: NodeConfig,
        *,
        hashes: PieceHashSource,
        node_name: str,
        web_seed_url: str,
        gate: TokenGate,
        signer: ManifestSigner | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        tracker = config.tracker
        self.config = tracker
        self.token_settings = config.tokens
        self.site = f"{config.site.namespace}/{config.site.name}"
        self.hashes = hashes
        self.node_name = node_name
        self.web_seed_url = web_seed_url.rstrip("/") + "/"
        self.gate = gate
        self.signer = signer
        self.clock = clock
        self.trusted_proxies = parse_networks(tracker.trusted_proxies)
        self.locality = Locality(parse_networks(config.client_networks))
        self.members = [m.name for m in config.peering.members]
        self.registry = SwarmRegistry(
            max_swarms=tracker.max_swarms,
            max_peers_per_swarm=tracker.max_peers_per_swarm,
            peer_ttl=tracker.peer_ttl_seconds,
            locality=self.locality,
        )
        # Twice the swarm bound: known objects need not all have peers at once.
        self.index = SwarmIndex(capacity=2 * tracker.max_swarms)
        # object key -> client-derived info-hashes admitted for it (see resolve)
        self._foreign: OrderedDict[str, list[bytes]] = OrderedDict()
        self.limiter = RateLimiter(
            rate=tracker.announces_per_second,
            burst=tracker.announce_burst,
            max_sources=tracker.max_rate_limited_sources,
        )
        self.efficiency = metrics.EfficiencyTracker()
        # Label lookups cost more than the increments; resolve each child once.
        self._announce_counters = {
            (t, e): metrics.ANNOUNCES.labels(t.value, e.value) for t in Transport for e in Event
        }
        self._peer_gauges = {t: metrics.PEERS.labels(t.value) for t in Transport}
        self.interval = tracker.announce_interval_seconds

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        *,
        hashes: PieceHashSource,
        node_name: str,
        web_seed_url: str,
        gate: TokenGate,
    ) -> TrackerService:
        key_file = config.tracker.manifest_key_file
        signer = ManifestSigner(load_signing_key(Path(key_file))) if key_file else None
        return cls(
            config,
            hashes=hashes,
            node_name=node_name,
            web_seed_url=web_seed_url,
            gate=gate,
            signer=signer,
        )

    # -- common steps -------------------------------------------------------

    def source(self, peer_host: str | None, forwarded_for: Sequence[str]) -> IPAddress:
        try:
            return client_address(peer_host, forwarded_for, self.trusted_proxies)
        except AddressError as exc:
            raise self._reject(400, "bad_source", str(exc)) from None

    def admit(self, addr: IPAddress, cost: float = 1.0) -> None:
        if not self.limiter.allow(addr, self.clock(), cost):
            wait = max(1.0, self.limiter.retry_after(addr))
            raise self._reject(
                429, "rate_limited", "too many tracker requests from this source", wait
            )

    async def resolve(self, info_hash: bytes, hints: Iterable[str], token: str | None) -> str:
        """The object key behind ``info_hash``, after the token check; else a RejectedError.

        An info-hash is known when it is the object's own swarm id (learnt from
        its manifest or recomputed from an ``object=`` hint). Clients that derive
        their own info-hashes (a WebTorrent .torrent of the object,
        p2p-media-loader's hashed swarm ids) name the object with ``object=`` in
        the announce URL: the hash is then admitted as a swarm *of that object*,
        once the object is served and the token covers it, at most
        ``MAX_FOREIGN_SWARMS_PER_OBJECT`` per object (oldest forgotten first).
        """
        key = self.index.lookup(info_hash)
        if key is None:
            served: str | None = None
            for hint in hints:
                info = await self.hashes.piece_info(hint)
                if info is None:
                    continue
                if swarm_id(hint, info.etag) == info_hash:
                    self.index.add(info_hash, hint)
                    key = hint
                    break
                served = served or hint
            if key is None and served is not None:
                refused = self.gate.check(token, served)
                if refused is not None:
                    raise self._reject(refused[0], "token", refused[1])
                self._admit_foreign(info_hash, served)
                return served
        if key is None:
            raise self._reject(
                404,
                "unknown_swarm",
                "unknown info_hash: this site serves no such object "
                "(fetch /manifest/<key> first or announce with object=<object key>)",
            )
        refused = self.gate.check(token, key)
        if refused is not None:
            raise self._reject(refused[0], "token", refused[1])
        return key

    def _admit_foreign(self, info_hash: bytes, key: str) -> None:
        hashes = self._foreign.pop(key, None) or []
        self._foreign[key] = hashes  # most recently used object last
        if info_hash in hashes:
            hashes.remove(info_hash)
        hashes.append(info_hash)
        if len(hashes) > MAX_FOREIGN_SWARMS_PER_OBJECT:
            self.index.discard(hashes.pop(0))
        while len(self._foreign) > self.index.capacity:
            _, dropped = self._foreign.popitem(last=False)
            for old in dropped:
                self.index.discard(old)
        self.index.add(info_hash, key)

    def owner_url(self, key: str) -> str | None:
        """Client base URL of the member owning ``key``'s swarm, when that is not us.

        Swarms live where their object lives (``cache_node.ring``, the same HRW
        ranking as content), so a site's tracker load spreads over its members
        like its bytes do.
        """
        urls = self.config.member_client_urls
        if not urls or not self.members:
            return None
        owner = ring.rank(key, self.members)[0]
        if owner == self.node_name:
            return None
        return urls.get(owner)

    def tracker_bases(self, key: str) -> list[str]:
        """Client base URLs to announce ``key`` to: its owner, then the next-ranked member.

        Without configured member URLs, this node's own origin (where the web
        seed is) is the tracker.
        """
        urls = self.config.member_client_urls
        if urls and self.members:
            ranked = [urls[m].rstrip("/") for m in ring.rank(key, self.members) if m in urls]
            if ranked:
                return ranked[:2]
        parts = urllib.parse.urlsplit(self.web_seed_url)
        return [f"{parts.scheme}://{parts.netloc}"]

    def announce_urls(self, key: str) -> list[list[str]]:
        """BEP 12 announce-list tiers: [[ws, http] of the owner], [[ws, http] of the fallback]."""
        query = urllib.parse.urlencode({"object": key})
        tiers = []
        for base in self.tracker_bases(key):
            ws = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
            tiers.append([f"{ws}/announce?{query}", f"{base}/announce?{query}"])
        return tiers

    def numwant(self, asked: int | None) -> int:
        if asked is None or asked < 0:
            return self.config.max_numwant
        return min(asked, self.config.max_numwant)

    def _reject(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> RejectedError:
        metrics.REJECTS.labels(reason).inc()
        return RejectedError(status, reason, message, retry_after)

    def _apply(self, req: AnnounceRequest, key: str) -> AnnounceOutcome:
        try:
            outcome = self.registry.announce(req, key, self.clock())
        except AnnounceRejectedError as exc:
            raise self._reject(
                409 if exc.reason == "peer_id_in_use" else 503, exc.reason, exc.message
            ) from None
        self._announce_counters[req.transport, req.event].inc()
        self._sync_gauges()
        self.efficiency.add(outcome.uploaded_delta, outcome.downloaded_delta)
        return outcome

    def _sync_gauges(self) -> None:
        metrics.SWARMS.set(len(self.registry))
        for transport, count in self.registry.peer_counts.items():
            self._peer_gauges[transport].set(count)

    def sweep(self) -> int:
        """Expire silent peers (periodic task); keeps the gauges honest."""
        expired = self.registry.sweep(self.clock())
        self._sync_gauges()
        return expired

    # -- HTTP (BEP 3 / 23 / 7) ---------------------------------------------

    async def http_announce(self, ann: HttpAnnounce, addr: IPAddress) -> bytes:
        """Apply an HTTP announce; returns the bencoded response body."""
        self.admit(addr)
        hints = [ann.key_hint] if ann.key_hint else []
        key = await self.resolve(ann.info_hash, hints, ann.token)
        owner = self.owner_url(key)
        if owner is not None:
            raise RedirectError(owner.rstrip("/"), key)
        req = AnnounceRequest(
            info_hash=ann.info_hash,
            peer_id=ann.peer_id,
            addr=addr,
            port=ann.port,
            uploaded=ann.uploaded,
            downloaded=ann.downloaded,
            left=ann.left,
            event=ann.event,
            numwant=self.numwant(ann.numwant),
            transport=Transport.HTTP,
        )
        outcome = self._apply(req, key)
        return self.http_body(outcome, compact=ann.compact, no_peer_id=ann.no_peer_id)

    def http_body(self, outcome: AnnounceOutcome, *, compact: bool, no_peer_id: bool) -> bytes:
        body: dict[str, bencode.Bencodable] = {
            "interval": self.interval,
            "min interval": max(1, self.interval // 4),
            "complete": outcome.complete,
            "incomplete": outcome.incomplete,
        }
        if compact:
            v4, v6 = compact_peers((p.packed, p.port) for p in outcome.peers)
            body["peers"] = v4
            body["peers6"] = v6
        else:
            body["peers"] = [_peer_dict(p, no_peer_id) for p in outcome.peers]
        return bencode.encode(body)

    async def http_scrape(
        self, info_hashes: Sequence[bytes], addr: IPAddress, token: str | None
    ) -> bytes:
        """BEP 48 scrape for named swarms only (a full scrape would list the catalogue)."""
        self.admit(addr)
        if not info_hashes:
            raise self._reject(400, "malformed", "scrape needs at least one info_hash")
        if len(info_hashes) > 100:
            raise self._reject(400, "malformed", "at most 100 info_hash values per scrape")
        metrics.SCRAPES.labels("http").inc()
        files = self.scrape_files(info_hashes, token)
        return bencode.encode(
            {
                "files": files,
                "flags": {"min_request_interval": self.interval},
            }
        )

    def scrape_files(
        self, info_hashes: Iterable[bytes], token: str | None
    ) -> dict[bytes, dict[str, bencode.Bencodable]]:
        files: dict[bytes, dict[str, bencode.Bencodable]] = {}
        for ih in info_hashes:
            key = self.index.lookup(ih)
            if key is None or self.gate.check(token, key) is not None:
                continue  # unknown or not allowed: say nothing about it
            stats = self.registry.scrape(ih)
            files[ih] = {
                "complete": stats.complete if stats else 0,
                "incomplete": stats.incomplete if stats else 0,
                "downloaded": stats.downloaded if stats else 0,
            }
        return files

    # -- WebSocket (webtorrent / bittorrent-tracker) -------------------------

    async def ws_message(self, session: WsPeerSession, message: object) -> None:
        """Handle one parsed WebSocket message; replies and relays go through sessions."""
        action = message.get("action") if isinstance(message, dict) else None
        raw_ih = message.get("info_hash") if isinstance(message, dict) else None
        try:
            if not isinstance(message, dict):
                raise self._reject(400, "malformed", "a tracker message is a JSON object")
            if action == "announce":
                await self._ws_announce(session, message)
            elif action == "scrape":
                self._ws_scrape(session, message)
            else:
                raise self._reject(400, "malformed", f"unknown action {action!r}")
        except RejectedError as exc:
            failure: dict[str, Any] = {"failure reason": exc.message}
            if action in ("announce", "scrape"):
                failure["action"] = action
            if isinstance(raw_ih, str) and len(raw_ih) == 20:
                failure["info_hash"] = raw_ih
            if exc.retry_after is not None:
                failure["retry in"] = int(exc.retry_after + 0.999)
            session.send(failure)

    async def _ws_announce(self, session: WsPeerSession, msg: dict[str, Any]) -> None:
        info_hash = _binary(msg.get("info_hash"), "info_hash")
        peer_id = _binary(msg.get("peer_id"), "peer_id")
        if msg.get("answer") is not None:
            self.admit(session.addr, ANSWER_COST)
            self._ws_answer(session, info_hash, peer_id, msg)
            return
        self.admit(session.addr)
        offers = msg.get("offers")
        if offers is None:
            offers = []
        if not isinstance(offers, list) or not all(_valid_offer(o) for o in offers):
            raise self._reject(
                400, "malformed", "offers must be a list of {offer: {type, sdp}, offer_id}"
            )
        try:
            event = Event.parse(msg.get("event"))
        except ValueError as exc:
            raise self._reject(400, "malformed", str(exc)) from None
        left_raw = msg.get("left")
        left = None if left_raw is None else _count(left_raw, "left")
        membership = (info_hash, peer_id)
        if membership not in session.swarms and len(session.swarms) >= MAX_WS_SWARMS_PER_CONNECTION:
            raise self._reject(429, "too_many_swarms", "this connection is in too many swarms")
        key = await self.resolve(info_hash, session.key_hints, session.token)
        if session.closed:
            return
        req = AnnounceRequest(
            info_hash=info_hash,
            peer_id=peer_id,
            addr=session.addr,
            port=0,
            uploaded=_count(msg.get("uploaded"), "uploaded"),
            downloaded=_count(msg.get("downloaded"), "downloaded"),
            left=left,
            event=event,
            numwant=min(len(offers), self.config.max_numwant),
            transport=Transport.WS,
            session=session,
        )
        outcome = self._apply(req, key)
        if event is Event.STOPPED:
            session.swarms.discard(membership)
        else:
            session.swarms.add(membership)
        ih_text = _text(info_hash)
        session.send(
            {
                "action": "announce",
                "interval": self.interval,
                "info_hash": ih_text,
                "complete": outcome.complete,
                "incomplete": outcome.incomplete,
            }
        )
        from_id = _text(peer_id)
        for peer, offer in zip(outcome.peers, offers, strict=False):
            target = peer.session
            if isinstance(target, WsPeerSession) and not target.closed:
                target.send(
                    {
                        "action": "announce",
                        "offer": offer["offer"],
                        "offer_id": offer["offer_id"],
                        "peer_id": from_id,
                        "info_hash": ih_text,
                    }
                )
                metrics.RELAYED.labels("offer").inc()

    def _ws_answer(
        self, session: WsPeerSession, info_hash: bytes, peer_id: bytes, msg: dict[str, Any]
    ) -> None:
        to_peer = _binary(msg.get("to_peer_id"), "to_peer_id")
        offer_id = msg.get("offer_id")
        answer = msg.get("answer")
        if not isinstance(offer_id, str) or len(offer_id) != 20 or not _valid_sdp(answer, "answer"):
            raise self._reject(400, "malformed", "an answer needs offer_id and {type, sdp}")
        swarm = self.registry.get(info_hash)
        me = swarm.peers.get(peer_id) if swarm else None
        target = swarm.peers.get(to_peer) if swarm else None
        if me is None or me.session is not session:
            raise self._reject(404, "unknown_peer", "announce to the swarm before answering")
        if target is None or not isinstance(target.session, WsPeerSession):
            raise self._reject(404, "unknown_peer", "no such peer in this swarm")
        target.session.send(
            {
                "action": "announce",
                "answer": answer,
                "offer_id": offer_id,
                "peer_id": _text(peer_id),
                "info_hash": _text(info_hash),
            }
        )
        metrics.RELAYED.labels("answer").inc()

    def _ws_scrape(self, session: WsPeerSession, msg: dict[str, Any]) -> None:
        self.admit(session.addr)
        raw = msg.get("info_hash")
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items or len(items) > 100:
            raise self._reject(400, "malformed", "scrape needs 1 to 100 info_hash values")
        hashes = [_binary(i, "info_hash") for i in items]
        metrics.SCRAPES.labels("ws").inc()
        files = self.scrape_files(hashes, session.token)
        session.send(
            {
                "action": "scrape",
                "files": {_text(ih): v for ih, v in files.items()},
                "flags": {"min_request_interval": self.interval},
            }
        )

    def ws_closed(self, session: WsPeerSession) -> None:
        """The connection ended: its peer leaves every swarm it joined (like ``stopped``)."""
        session.closed = True
        for info_hash, peer_id in list(session.swarms):
            self.registry.leave(info_hash, peer_id, session)
        session.swarms.clear()
        self._sync_gauges()

    # -- manifests -----------------------------------------------------------

    async def manifest(self, key: str, token: str | None) -> dict[str, str]:
        """The signed piece-hash manifest of ``key``; registers its swarm id."""
        if self.signer is None:
            raise self._reject(
                503, "no_signing_key", "manifest signing is not configured on this node"
            )
        refused = self.gate.check(token, key)
        if refused is not None:
            raise self._reject(refused[0], "token", refused[1])
        info = await self.hashes.piece_info(key)
        if info is None:
            raise self._reject(404, "unknown_object", "this site serves no such object")
        self.index.add(swarm_id(key, info.etag), key)
        metrics.MANIFESTS.inc()
        return self.signer.sign(
            key,
            info,
            web_seed=self.web_seed_url + urllib.parse.quote(key),
            site=self.site,
            announce=self.announce_urls(key),
        )

    def public_keys(self) -> dict[str, list[dict[str, str]]]:
        keys = [self.signer.public_jwk()] if self.signer else []
        return {"keys": keys}


def _peer_dict(peer: Peer, no_peer_id: bool) -> dict[str, bencode.Bencodable]:
    import ipaddress

    out: dict[str, bencode.Bencodable] = {
        "ip": str(ipaddress.ip_address(peer.packed)),
        "port": peer.port,
    }
    if not no_peer_id:
        out["peer id"] = peer.peer_id
    return out


def _valid_sdp(value: object, kind: str) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") == kind
        and isinstance(value.get("sdp"), str)
        and len(value["sdp"]) <= 64 * 1024
    )


def _valid_offer(value: object) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("offer_id"), str)
        and len(value["offer_id"]) == 20
        and _valid_sdp(value.get("offer"), "offer")
    )


async def sweeper(service: TrackerService, period: float) -> None:
    """Periodic expiry of silent peers; runs for the app's lifetime."""
    while True:
        await asyncio.sleep(period)
        expired = service.sweep()
        if expired:
            log.info("tracker_sweep", node=service.node_name, site=service.site, expired=expired)
