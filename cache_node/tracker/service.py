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

Owner routing (``relay.py``): a swarm lives on the member that owns its object
by the content ranking; other members redirect HTTP announces there (or
forward them over a member link) and relay WebSocket messages both ways, so
two clients of one swarm meet whichever member each reached.

Decisions worth knowing:

* HTTP announce and scrape failures are bencoded ``failure reason`` dicts with
  status 200 (BEP 3: clients read the body, many ignore it on other statuses),
  plus BEP 31 ``retry in`` (minutes) and ``Retry-After`` when rate limited.
* ``ip=`` and ``ipv6=`` (BEP 7) are never used: a peer's address is the one its
  packets came from, so nobody can point a swarm at someone else. A dual-stack
  client that wants both families listed announces once over each family.
* Bad pieces: a client that received a piece failing its manifest hash cannot
  prove which peer sent it (WebRTC and BitTorrent peers are not identified to
  the tracker by anything it can check), so the tracker takes no reports and
  bans nobody on a client's word; that would hand any client a way to evict
  honest peers. Clients drop the peer and take the piece from the web seed;
  the signed manifest is what keeps bad data out.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
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
    canonical,
    client_address,
    parse_networks,
)
from cache_node.tracker.manifest import (
    ManifestSigner,
    PieceHashSource,
    PieceInfo,
    SwarmIndex,
    load_signing_key,
    swarm_id,
)
from cache_node.tracker.ratelimit import RateLimiter
from cache_node.tracker.relay import (
    Frame,
    Link,
    LinkError,
    Links,
    Membership,
    StaticMembership,
    client_base_from_peer_url,
)
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
MAX_SCRAPE_HASHES = 100
MANIFEST_FILL_SECONDS = 30.0
_SESSION_IDS = itertools.count(1)


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
    """This swarm (or manifest) lives on another member: send the client there (HTTP 307)."""

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


class ObjectFiller(Protocol):
    """The content side: bring an object this site serves into the local store.

    Returns its piece info once committed, None when the origin has no such
    object; raises :class:`FillUnavailableError` when it cannot tell now.
    """

    async def fill(self, key: str) -> PieceInfo | None: ...


class FillUnavailableError(Exception):
    """The object could not be filled now (origin or peers failing, deadline passed)."""


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
    # Memberships whose swarm lives on another member: -> (member, announce to replay).
    relayed: dict[tuple[bytes, bytes], tuple[str, dict[str, Any]]] = field(default_factory=dict)
    sid: int = field(default_factory=lambda: next(_SESSION_IDS))
    closed: bool = False

    def send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.sender(message)

    def detach(self, info_hash: bytes, peer_id: bytes) -> None:
        self.swarms.discard((info_hash, peer_id))


@dataclass(eq=False)
class MemberLink:
    """A link another member opened to us (we own the swarms it relays): its clients by id."""

    member: str
    sender: Callable[[Frame], None]
    sessions: dict[int, WsPeerSession] = field(default_factory=dict)


@dataclass(slots=True)  # not frozen: built on every announce, frozen __init__ is slower
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
        membership: Membership | None = None,
        filler: ObjectFiller | None = None,
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
        self.membership = membership or static_membership(config, node_name)
        self.filler = filler
        self.links = Links(
            self.membership,
            on_frame=self._from_member,
            on_lost=self._link_lost,
            connect_timeout=config.peering.connect_timeout_seconds,
        )
        # Client connections with memberships (or scrapes) relayed to other members, by id.
        self._relay_sessions: dict[int, WsPeerSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
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
        # Gauges read the registry when scraped: nothing to update per announce.
        metrics.SWARMS.set_function(self.registry.__len__)
        for transport in Transport:
            metrics.PEERS.labels(transport.value).set_function(
                functools.partial(self.registry.peer_counts.__getitem__, transport)
            )
        tid = self.node_name.encode("utf-8")
        self._tracker_id = b"%d:%s" % (len(tid), tid)
        self.interval = tracker.announce_interval_seconds
        self.min_interval = max(1, self.interval // 4)

    def reconfigure(self, config: NodeConfig) -> None:
        """Apply a reloaded node configuration without dropping swarms.

        Live: ``memberClientUrls`` (owner redirects), the numwant cap, the
        announce interval, trusted proxies, per-source rate limits and the
        site's client networks (peers already in a swarm keep their locality
        group until they re-announce). Bounds sized at start (``maxSwarms``,
        ``maxPeersPerSwarm``, ``peerTtlSeconds``, the rate-limit table) keep
        their running values until the node restarts.
        """
        tracker = config.tracker
        self.config = tracker.model_copy(
            update={
                "max_swarms": self.config.max_swarms,
                "max_peers_per_swarm": self.config.max_peers_per_swarm,
                "peer_ttl_seconds": self.config.peer_ttl_seconds,
                "max_rate_limited_sources": self.config.max_rate_limited_sources,
            }
        )
        self.trusted_proxies = parse_networks(tracker.trusted_proxies)
        self.limiter.rate = tracker.announces_per_second
        self.limiter.burst = tracker.announce_burst
        self.interval = tracker.announce_interval_seconds
        self.min_interval = max(1, self.interval // 4)
        networks = parse_networks(config.client_networks)
        if networks != self.locality.client_networks:
            self.locality = Locality(networks)
            self.registry.locality = self.locality

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        *,
        hashes: PieceHashSource,
        node_name: str,
        web_seed_url: str,
        gate: TokenGate,
        membership: Membership | None = None,
        filler: ObjectFiller | None = None,
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
            membership=membership,
            filler=filler,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.links.close()

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
                self._check_token(token, served)
                self._admit_foreign(info_hash, served)
                return served
        if key is None:
            raise self._reject(
                404,
                "unknown_swarm",
                "unknown info_hash: this site serves no such object "
                "(fetch /manifest/<key> first or announce with object=<object key>)",
            )
        self._check_token(token, key)
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

    def member_names(self) -> list[str]:
        return list(self.membership.link_urls())

    def owner_url(self, key: str) -> str | None:
        """Client base URL of the member owning ``key``'s swarm, when that is not us.

        Swarms live where their object lives (``cache_node.ring``, the same HRW
        ranking as content), so a site's tracker load spreads over its members
        like its bytes do. A member known to be down is passed over for the next.
        """
        urls = self.config.member_client_urls
        names = self.member_names()
        if not urls or self.node_name not in names:
            return None
        for name in ring.rank(key, names):
            if name == self.node_name:
                return None
            if name in urls and not self.links.is_down(name):
                return urls[name]
        return None

    async def route(self, key: str) -> Link | None:
        """The link to the member holding ``key``'s swarm, or None when this node holds it.

        Walks the ranking: a member that cannot be reached is skipped (marked
        down for a few seconds), so the next-ranked member takes its swarms.
        """
        if not self.links.enabled():
            return None
        names = self.member_names()
        if self.node_name not in names:
            return None
        for name in ring.rank(key, names):
            if name == self.node_name:
                return None
            link = await self.links.get(name)
            if link is not None:
                return link
        return None

    def tracker_bases(self, key: str) -> list[str]:
        """Client base URLs to announce ``key`` to: its owner, then the next-ranked member.

        Without configured member URLs, this node's own origin (where the web
        seed is) is the tracker.
        """
        urls = self.config.member_client_urls
        names = self.member_names()
        if urls and names:
            ranked = [urls[m].rstrip("/") for m in ring.rank(key, names) if m in urls]
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

    def _check_token(self, token: str | None, key: str) -> None:
        refused = self.gate.check(token, key)
        if refused is not None:
            raise self._reject(refused[0], "token", refused[1])

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
        self.efficiency.add(outcome.uploaded_delta, outcome.downloaded_delta)
        return outcome

    def sweep(self) -> int:
        """Expire silent peers (periodic task); keeps the gauges honest."""
        expired = self.registry.sweep(self.clock())
        return expired

    # -- HTTP (BEP 3 / 23 / 7) ---------------------------------------------

    async def http_announce(
        self, ann: HttpAnnounce, addr: IPAddress, *, admit: bool = True, route: bool = True
    ) -> bytes:
        """Apply an HTTP announce; returns the bencoded response body.

        ``admit`` and ``route`` are off for announces a member forwarded to us
        (it charged the client's rate limit and chose us as the swarm's owner).
        """
        if admit:
            self.admit(addr)
        if route and (self.config.member_client_urls or self.links.enabled()):
            key = self.index.lookup(ann.info_hash) or ann.key_hint
            if key is not None:
                owner = self.owner_url(key)
                link = None if owner is not None else await self.route(key)
                if owner is not None or link is not None:
                    self._check_token(ann.token, key)
                if owner is not None:
                    raise RedirectError(owner.rstrip("/"), key)
                if link is not None:
                    try:
                        return await self._forward_http(link, ann, addr, key)
                    except LinkError as exc:
                        self.links.mark_down(link.name)
                        log.info("tracker_forward_failed", member=link.name, error=str(exc))
                        return await self.http_announce(ann, addr, admit=False)
        hints = [ann.key_hint] if ann.key_hint else []
        key = await self.resolve(ann.info_hash, hints, ann.token)
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

    async def _forward_http(
        self, link: Link, ann: HttpAnnounce, addr: IPAddress, key: str
    ) -> bytes:
        hints = [key] + ([ann.key_hint] if ann.key_hint and ann.key_hint != key else [])
        reply = await link.request(
            {"t": "http", "addr": str(addr), "hints": hints, "ann": _announce_to_json(ann)}
        )
        metrics.RELAYED.labels("forward").inc()
        body = reply.get("body")
        if isinstance(body, str):
            return body.encode("latin-1")
        error = reply.get("error")
        if isinstance(error, list) and len(error) == 3:
            status, reason, message = error
            raise RejectedError(int(status), str(reason), str(message))
        raise LinkError(f"{link.name} sent an unusable reply")

    def http_body(self, outcome: AnnounceOutcome, *, compact: bool, no_peer_id: bool) -> bytes:
        """The BEP 3 reply; the compact form is written directly (the hot path of the tracker)."""
        if compact:
            v4 = b"".join([p.compact for p in outcome.peers if len(p.compact) == 6])
            v6 = b"".join([p.compact for p in outcome.peers if len(p.compact) != 6])
            # Keys in bencoding's sorted order; equal to bencode.encode of the same dict.
            return (
                b"d8:completei%de10:incompletei%de8:intervali%de12:min intervali%de"
                b"5:peers%d:%s6:peers6%d:%s10:tracker id%se"
                % (
                    outcome.complete,
                    outcome.incomplete,
                    self.interval,
                    self.min_interval,
                    len(v4),
                    v4,
                    len(v6),
                    v6,
                    self._tracker_id,
                )
            )
        body: dict[str, bencode.Bencodable] = {
            "interval": self.interval,
            "min interval": self.min_interval,
            "complete": outcome.complete,
            "incomplete": outcome.incomplete,
            "tracker id": self.node_name,
            "peers": [_peer_dict(p, no_peer_id) for p in outcome.peers],
        }
        return bencode.encode(body)

    async def http_scrape(
        self,
        info_hashes: Sequence[bytes],
        addr: IPAddress,
        token: str | None,
        hints: Sequence[str] = (),
    ) -> bytes:
        """BEP 48 scrape for named swarms only (a full scrape would list the catalogue)."""
        self.admit(addr)
        self._check_scrape_size(info_hashes)
        metrics.SCRAPES.labels("http").inc()
        files = await self.scrape_everywhere(info_hashes, token, hints)
        return bencode.encode(
            {
                "files": files,
                "flags": {"min_request_interval": self.interval},
            }
        )

    def _check_scrape_size(self, info_hashes: Sequence[bytes]) -> None:
        if not info_hashes:
            raise self._reject(400, "malformed", "scrape needs at least one info_hash")
        if len(info_hashes) > MAX_SCRAPE_HASHES:
            raise self._reject(
                400, "malformed", f"at most {MAX_SCRAPE_HASHES} info_hash values per scrape"
            )

    async def scrape_everywhere(
        self, info_hashes: Sequence[bytes], token: str | None, hints: Sequence[str] = ()
    ) -> dict[bytes, dict[str, bencode.Bencodable]]:
        """Scrape counts of swarms held here, and of swarms other members own (asked there)."""
        local: list[bytes] = []
        remote: dict[str, tuple[Link, list[bytes]]] = {}
        for ih in info_hashes:
            key = self.index.lookup(ih) or (hints[0] if hints else None)
            link = await self.route(key) if key is not None else None
            if link is None:
                local.append(ih)
            else:
                remote.setdefault(link.name, (link, []))[1].append(ih)
        files = self.scrape_files(local, token, hints)
        for link, hashes in remote.values():
            try:
                reply = await link.request(
                    {
                        "t": "scrape",
                        "token": token,
                        "hints": list(hints),
                        "info_hash": [_text(h) for h in hashes],
                    }
                )
            except LinkError:
                self.links.mark_down(link.name)
                files.update(self.scrape_files(hashes, token, hints))
                continue
            got = reply.get("files")
            if isinstance(got, dict):
                for ih_text, counts in got.items():
                    if isinstance(ih_text, str) and isinstance(counts, dict):
                        files[ih_text.encode("latin-1")] = {
                            k: int(counts.get(k, 0))
                            for k in ("complete", "incomplete", "downloaded")
                        }
        return files

    def scrape_files(
        self, info_hashes: Iterable[bytes], token: str | None, hints: Sequence[str] = ()
    ) -> dict[bytes, dict[str, bencode.Bencodable]]:
        """Counts of the named swarms held here; unknown or forbidden ones are left out.

        A swarm with peers is known by its registry entry even when its hash is
        a client-chosen one (admitted under an ``object=`` hint).
        """
        files: dict[bytes, dict[str, bencode.Bencodable]] = {}
        for ih in info_hashes:
            key = self.index.lookup(ih)
            swarm = self.registry.get(ih)
            if key is None and swarm is not None:
                key = swarm.key
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

    async def ws_message(
        self, session: WsPeerSession, message: object, *, admit: bool = True, route: bool = True
    ) -> None:
        """Handle one parsed WebSocket message; replies and relays go through sessions.

        ``admit`` is off for messages relayed by a member (it charged the
        client) and re-announces after a link loss; ``route`` is off for
        messages relayed by a member (we are the swarm's owner for it).
        """
        action = message.get("action") if isinstance(message, dict) else None
        raw_ih = message.get("info_hash") if isinstance(message, dict) else None
        try:
            if not isinstance(message, dict):
                raise self._reject(400, "malformed", "a tracker message is a JSON object")
            if action == "announce":
                if admit:
                    answer = message.get("answer") is not None
                    self.admit(session.addr, ANSWER_COST if answer else 1.0)
                if route and self.links.enabled() and await self._ws_forward(session, message):
                    return
                await self._ws_announce(session, message)
            elif action == "scrape":
                if admit:
                    self.admit(session.addr)
                await self._ws_scrape(session, message, route)
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

    async def _ws_forward(self, session: WsPeerSession, msg: dict[str, Any]) -> bool:
        """Relay ``msg`` to the member owning its swarm; False when this node owns it."""
        info_hash = _binary(msg.get("info_hash"), "info_hash")
        peer_id = _binary(msg.get("peer_id"), "peer_id")
        membership = (info_hash, peer_id)
        if msg.get("answer") is not None:
            via = session.relayed.get(membership)
            link = self.links.open_link(via[0]) if via is not None else None
            if link is None:
                return False
            if not self._relay(link, session, msg, ()):
                raise self._reject(503, "relay_congested", "the swarm's node is not keeping up")
            return True
        key = self.index.lookup(info_hash) or (session.key_hints[0] if session.key_hints else None)
        if key is None:
            return False
        link = await self.route(key)
        if link is None:
            self._unrelay(session, membership)
            return False
        self._check_token(session.token, key)
        if session.closed:
            return True
        if membership in session.swarms:  # held here while its owner was down: move it
            self.registry.leave(info_hash, peer_id, session)
            session.swarms.discard(membership)
        via = session.relayed.get(membership)
        if via is not None and via[0] != link.name:
            self._unrelay(session, membership)
        hints = (key, *(h for h in session.key_hints if h != key))
        if not self._relay(link, session, msg, hints):
            raise self._reject(503, "relay_congested", "the swarm's node is not keeping up")
        metrics.RELAYED.labels("forward").inc()
        if msg.get("event") == Event.STOPPED.value:
            session.relayed.pop(membership, None)
        else:
            replay = {k: v for k, v in msg.items() if k not in ("offers", "event", "numwant")}
            replay["hints"] = list(hints)
            session.relayed[membership] = (link.name, replay)
        return True

    def _relay(
        self, link: Link, session: WsPeerSession, msg: dict[str, Any], hints: Sequence[str]
    ) -> bool:
        self._relay_sessions[session.sid] = session
        return link.send(
            {
                "t": "ws",
                "sid": session.sid,
                "addr": str(session.addr),
                "token": session.token,
                "hints": list(hints),
                "msg": msg,
            }
        )

    def _unrelay(self, session: WsPeerSession, membership: tuple[bytes, bytes]) -> None:
        """Take a relayed membership back: the member that held it forgets the peer."""
        via = session.relayed.pop(membership, None)
        link = self.links.open_link(via[0]) if via is not None else None
        if link is not None:
            info_hash, peer_id = membership
            link.send(
                {
                    "t": "leave",
                    "sid": session.sid,
                    "info_hash": _text(info_hash),
                    "peer_id": _text(peer_id),
                }
            )

    def _from_member(self, member: str, frame: Frame) -> None:
        """A frame an owner sent back over our link: deliver it to the relayed client."""
        if frame.get("t") != "ws":
            return
        session = self._relay_sessions.get(frame.get("sid"))  # type: ignore[arg-type]
        msg = frame.get("msg")
        if session is not None and isinstance(msg, dict):
            session.send(msg)

    def _link_lost(self, member: str) -> None:
        """A link dropped: re-announce its memberships to the next route at once."""
        for session in list(self._relay_sessions.values()):
            for membership, (name, replay) in list(session.relayed.items()):
                if name != member:
                    continue
                del session.relayed[membership]
                if not session.closed:
                    self._spawn(self._reannounce(session, replay))

    async def _reannounce(self, session: WsPeerSession, replay: dict[str, Any]) -> None:
        msg = dict(replay)
        hints = msg.pop("hints", None)
        if isinstance(hints, list) and not session.key_hints:
            session.key_hints = tuple(h for h in hints if isinstance(h, str))
        await self.ws_message(session, msg, admit=False)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- member links (the owner's side) -------------------------------------

    async def member_frame(self, peer: MemberLink, frame: object) -> Frame | None:
        """Handle a frame a member relayed to us; returns the reply for request frames."""
        if not isinstance(frame, dict):
            return None
        kind = frame.get("t")
        sid = frame.get("sid")
        if kind == "ws" and isinstance(sid, int):
            session = peer.sessions.get(sid)
            if session is None:
                try:
                    addr = canonical(ipaddress.ip_address(str(frame.get("addr"))))
                except ValueError:
                    return None
                token = frame.get("token")
                session = WsPeerSession(
                    addr=addr,
                    sender=functools.partial(_to_member, peer, sid),
                    token=token if isinstance(token, str) else None,
                )
                peer.sessions[sid] = session
            hints = frame.get("hints")
            if isinstance(hints, list) and hints:
                session.key_hints = tuple(h for h in hints[:16] if isinstance(h, str))
            await self.ws_message(session, frame.get("msg"), admit=False, route=False)
        elif kind == "leave" and isinstance(sid, int):
            session = peer.sessions.get(sid)
            ih, pid = frame.get("info_hash"), frame.get("peer_id")
            if session is not None and isinstance(ih, str) and isinstance(pid, str):
                membership = (ih.encode("latin-1"), pid.encode("latin-1"))
                self.registry.leave(*membership, session)
                session.swarms.discard(membership)
        elif kind == "close" and isinstance(sid, int):
            session = peer.sessions.pop(sid, None)
            if session is not None:
                self.ws_closed(session)
        elif kind == "http":
            return {"t": "http", "rid": frame.get("rid"), **await self._member_http(frame)}
        elif kind == "scrape":
            return {"t": "scrape", "rid": frame.get("rid"), **self._member_scrape(frame)}
        return None

    async def _member_http(self, frame: Frame) -> Frame:
        try:
            addr = canonical(ipaddress.ip_address(str(frame.get("addr"))))
            hints = [h for h in frame.get("hints") or [] if isinstance(h, str)]
            ann = _announce_from_json(frame.get("ann"), hints[0] if hints else None)
            body = await self.http_announce(ann, addr, admit=False, route=False)
        except RejectedError as exc:
            return {"error": [exc.status, exc.reason, exc.message]}
        except (KeyError, TypeError, ValueError) as exc:
            return {"error": [400, "malformed", f"unusable forwarded announce: {exc}"]}
        return {"body": body.decode("latin-1")}

    def _member_scrape(self, frame: Frame) -> Frame:
        raw = frame.get("info_hash")
        token = frame.get("token")
        hints = [h for h in frame.get("hints") or [] if isinstance(h, str)]
        if not isinstance(raw, list):
            return {"files": {}}
        hashes = [h.encode("latin-1") for h in raw[:MAX_SCRAPE_HASHES] if isinstance(h, str)]
        files = self.scrape_files(hashes, token if isinstance(token, str) else None, hints)
        return {"files": {_text(ih): v for ih, v in files.items()}}

    def member_link_closed(self, peer: MemberLink) -> None:
        """A member's link dropped: its relayed clients leave our swarms."""
        for session in peer.sessions.values():
            self.ws_closed(session)
        peer.sessions.clear()

    # -- WebSocket, local part -------------------------------------------------

    async def _ws_announce(self, session: WsPeerSession, msg: dict[str, Any]) -> None:
        info_hash = _binary(msg.get("info_hash"), "info_hash")
        peer_id = _binary(msg.get("peer_id"), "peer_id")
        if msg.get("answer") is not None:
            self._ws_answer(session, info_hash, peer_id, msg)
            return
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

    async def _ws_scrape(self, session: WsPeerSession, msg: dict[str, Any], route: bool) -> None:
        raw = msg.get("info_hash")
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items or len(items) > MAX_SCRAPE_HASHES:
            raise self._reject(
                400, "malformed", f"scrape needs 1 to {MAX_SCRAPE_HASHES} info_hash values"
            )
        hashes = [_binary(i, "info_hash") for i in items]
        metrics.SCRAPES.labels("ws").inc()
        if route:
            files = await self.scrape_everywhere(hashes, session.token, session.key_hints)
        else:
            files = self.scrape_files(hashes, session.token, session.key_hints)
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
        if self._relay_sessions.pop(session.sid, None) is not None:
            # Every open link: a member may hold a session for it with no swarm left.
            for link in self.links.open_links():
                link.send({"t": "close", "sid": session.sid})
        session.relayed.clear()

    # -- manifests -----------------------------------------------------------

    async def manifest(self, key: str, token: str | None) -> dict[str, str]:
        """The signed piece-hash manifest of ``key``; registers its swarm id.

        A member that does not hold the object sends the client to the owner
        (307, when members have public URLs and the owner is up), else fills
        the object through the content path (the owner, then the origin) and
        answers itself: any member answers for any object the site serves.
        """
        if self.signer is None:
            raise self._reject(
                503, "no_signing_key", "manifest signing is not configured on this node"
            )
        self._check_token(token, key)
        info = await self.hashes.piece_info(key)
        if info is None:
            owner = self.owner_url(key)
            if owner is not None:
                raise RedirectError(owner.rstrip("/"), key)
            info = await self._fill(key)
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

    async def _fill(self, key: str) -> PieceInfo | None:
        if self.filler is None:
            return None
        try:
            async with asyncio.timeout(MANIFEST_FILL_SECONDS):
                return await self.filler.fill(key)
        except (TimeoutError, FillUnavailableError) as exc:
            raise self._reject(
                503,
                "fill_failed",
                f"the object could not be fetched for its manifest now: {exc or 'timed out'}",
                retry_after=5.0,
            ) from None

    def public_keys(self) -> dict[str, list[dict[str, str]]]:
        keys = [self.signer.public_jwk()] if self.signer else []
        return {"keys": keys}


def _to_member(peer: MemberLink, sid: int, message: dict[str, Any]) -> None:
    peer.sender({"t": "ws", "sid": sid, "msg": message})


def static_membership(config: NodeConfig, node_name: str) -> StaticMembership:
    """Members from the config as it is now: client ports at the hosts of their peer URLs."""
    from cache_node.peering import read_secret

    urls = {
        m.name: client_base_from_peer_url(m.peer_url, config.listen.client_port)
        for m in config.peering.members
    }
    return StaticMembership(node_name, urls, read_secret(config.peering.secret_file))


def _announce_to_json(ann: HttpAnnounce) -> dict[str, Any]:
    return {
        "info_hash": _text(ann.info_hash),
        "peer_id": _text(ann.peer_id),
        "port": ann.port,
        "uploaded": ann.uploaded,
        "downloaded": ann.downloaded,
        "left": ann.left,
        "event": ann.event.value,
        "numwant": ann.numwant,
        "compact": ann.compact,
        "no_peer_id": ann.no_peer_id,
        "token": ann.token,
    }


def _announce_from_json(raw: object, key_hint: str | None) -> HttpAnnounce:
    if not isinstance(raw, dict):
        raise TypeError("ann must be an object")

    def opt_int(name: str) -> int | None:
        value = raw.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer")
        return value

    token = raw.get("token")
    return HttpAnnounce(
        info_hash=_binary(raw.get("info_hash"), "info_hash"),
        peer_id=_binary(raw.get("peer_id"), "peer_id"),
        port=int(raw["port"]),
        uploaded=opt_int("uploaded") or 0,
        downloaded=opt_int("downloaded") or 0,
        left=opt_int("left"),
        event=Event.parse(raw.get("event")),
        numwant=opt_int("numwant"),
        compact=bool(raw.get("compact")),
        no_peer_id=bool(raw.get("no_peer_id")),
        key_hint=key_hint,
        token=token if isinstance(token, str) else None,
    )


def _peer_dict(peer: Peer, no_peer_id: bool) -> dict[str, bencode.Bencodable]:
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
