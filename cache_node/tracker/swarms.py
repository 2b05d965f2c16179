"""Swarms and their peers, in memory, bounded in every dimension.

Bounds, and why each exists:

* ``max_swarms``: swarms exist only for objects the site serves (the caller
  checks that first), and never more than this many, so a flood of random
  info-hashes cannot grow memory.
* ``max_peers_per_swarm``: each swarm is an LRU ordered by last announce; a new
  peer in a full swarm evicts the least recently seen one (as the reference
  tracker does). Per-source rate limits bound how fast anyone can churn it.
* ``peer_ttl``: a peer that stops announcing (crashed, closed its laptop)
  expires; expiry is checked on each announce of its swarm and by a periodic
  :meth:`SwarmRegistry.sweep`.

Peers are small ``__slots__`` objects holding the packed address, not
``ipaddress`` objects, and precomputed locality facts (prefix and client
network), so selecting peers is integer comparisons.

An HTTP peer is identified by its peer id *and* address: someone who learns a
peer id cannot update or stop another client's entry. A WebSocket peer is bound
to its connection: only that connection may speak for its peer id.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from cache_node.tracker.addresses import IPAddress, Locality

MAX_BYTES_DELTA = 1 << 40  # a single announce claiming more than 1 TiB is a lie, not traffic


class Transport(enum.Enum):
    HTTP = "http"
    WS = "ws"


class Event(enum.Enum):
    STARTED = "started"
    STOPPED = "stopped"
    COMPLETED = "completed"
    UPDATE = "update"
    PAUSED = "paused"

    @classmethod
    def parse(cls, raw: str | None) -> Event:
        """BEP 3 events; an absent or ``empty`` event is a regular update."""
        if raw is None or raw in ("", "empty", "update"):
            return cls.UPDATE
        try:
            return cls(raw)
        except ValueError:
            raise ValueError(
                f"unknown event {raw!r}: use started, stopped, completed or omit it"
            ) from None


class AnnounceRejectedError(Exception):
    """An announce the registry will not take; ``reason`` is a stable metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Peer:
    """One peer in one swarm. ``ident`` is peer id + packed address (20 + 4 or 16 bytes)."""

    __slots__ = (
        "compact",
        "complete",
        "downloaded",
        "expires",
        "ident",
        "net",
        "net_pos",
        "port",
        "prefix_pos",
        "session",
        "transport",
        "uploaded",
    )

    def __init__(
        self,
        ident: bytes,
        port: int,
        transport: Transport,
        session: object | None,
        net: int,
    ) -> None:
        self.ident = ident
        self.port = port
        # BEP 23 form (address + port), kept ready: every announce reply joins these.
        self.compact = ident[20:] + port.to_bytes(2, "big")
        self.transport = transport
        self.session = session
        self.net = net
        self.complete = False
        self.uploaded = 0
        self.downloaded = 0
        self.expires = 0.0
        self.net_pos = -1
        self.prefix_pos = -1

    @property
    def peer_id(self) -> bytes:
        return self.ident[:20]

    @property
    def packed(self) -> bytes:
        return self.ident[20:]

    @property
    def prefix(self) -> bytes:
        """The /24 (IPv4) or /48 (IPv6) this peer is in, as packed bytes."""
        return self.ident[20:23] if len(self.ident) == 24 else self.ident[20:26]

    @property
    def net_group(self) -> int:
        return (self.net << 1) | (self.transport is Transport.WS)

    @property
    def prefix_group(self) -> bytes:
        return self.prefix + (b"w" if self.transport is Transport.WS else b"h")


class _Groups:
    """Locality index of a large swarm: peers by (client network, transport) and by prefix.

    Each group is a list with swap-remove (every peer knows its position), so
    adding, removing and drawing random members are O(1): selection in a swarm
    of thousands costs O(numwant), not O(swarm). Small swarms do not carry it
    (a scan is cheaper than the memory).
    """

    __slots__ = ("by_net", "by_prefix")

    def __init__(self) -> None:
        self.by_net: dict[int, list[Peer]] = {}
        self.by_prefix: dict[bytes, list[Peer]] = {}

    def add(self, peer: Peer) -> None:
        nets = self.by_net.setdefault(peer.net_group, [])
        peer.net_pos = len(nets)
        nets.append(peer)
        near = self.by_prefix.setdefault(peer.prefix_group, [])
        peer.prefix_pos = len(near)
        near.append(peer)

    def remove(self, peer: Peer) -> None:
        nets = self.by_net[peer.net_group]
        last = nets.pop()
        if last is not peer:
            nets[peer.net_pos] = last
            last.net_pos = peer.net_pos
        if not nets:
            del self.by_net[peer.net_group]
        group = peer.prefix_group
        near = self.by_prefix[group]
        last = near.pop()
        if last is not peer:
            near[peer.prefix_pos] = last
            last.prefix_pos = peer.prefix_pos
        if not near:
            del self.by_prefix[group]


INDEX_ABOVE = 64  # swarms larger than this keep a _Groups index


class Swarm:
    __slots__ = ("complete", "downloaded", "groups", "info_hash", "key", "peers")

    def __init__(self, info_hash: bytes, key: str) -> None:
        self.info_hash = info_hash
        self.key = key
        # A plain dict in insertion order is the LRU (re-inserting moves a key to
        # the end); an OrderedDict would cost ~160 more bytes per swarm. Evicting
        # from the front scans deleted slots, which the per-swarm cap keeps small.
        self.peers: dict[bytes, Peer] = {}
        self.complete = 0
        self.downloaded = 0  # times a peer reported ``completed`` (scrape semantics)
        self.groups: _Groups | None = None

    def add(self, pkey: bytes, peer: Peer) -> None:
        self.peers[pkey] = peer
        if self.groups is not None:
            self.groups.add(peer)
        elif len(self.peers) > INDEX_ABOVE:
            self.groups = _Groups()
            for each in self.peers.values():
                self.groups.add(each)

    def touch(self, pkey: bytes, peer: Peer) -> None:
        """Move a peer to the most recently seen end (its locality groups do not change)."""
        del self.peers[pkey]
        self.peers[pkey] = peer

    def discard(self, pkey: bytes, peer: Peer) -> None:
        del self.peers[pkey]
        if self.groups is not None:
            self.groups.remove(peer)

    @property
    def incomplete(self) -> int:
        return len(self.peers) - self.complete


@dataclass(slots=True)  # not frozen: frozen __init__ costs a setattr call per field
class AnnounceRequest:
    info_hash: bytes
    peer_id: bytes
    addr: IPAddress
    port: int
    uploaded: int
    downloaded: int
    left: int | None
    event: Event
    numwant: int
    transport: Transport
    session: object | None = None


@dataclass(slots=True)
class AnnounceOutcome:
    complete: int
    incomplete: int
    peers: list[Peer] = field(default_factory=list)
    uploaded_delta: int = 0
    downloaded_delta: int = 0
    joined: bool = False
    left_swarm: bool = False


@dataclass(frozen=True, slots=True)
class ScrapeStats:
    complete: int
    incomplete: int
    downloaded: int


class SwarmRegistry:
    """All swarms of this tracker; single-threaded (one event loop), no locks needed."""

    def __init__(
        self,
        *,
        max_swarms: int,
        max_peers_per_swarm: int,
        peer_ttl: float,
        locality: Locality,
        rng: random.Random | None = None,
    ) -> None:
        self.max_swarms = max_swarms
        self.max_peers_per_swarm = max_peers_per_swarm
        self.peer_ttl = peer_ttl
        self.locality = locality
        self._rng = rng or random.Random()  # noqa: S311 - peer shuffling, not security
        self._swarms: dict[bytes, Swarm] = {}
        self.peer_counts: dict[Transport, int] = dict.fromkeys(Transport, 0)
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._swarms)

    def __iter__(self) -> Iterator[Swarm]:
        return iter(self._swarms.values())

    def get(self, info_hash: bytes) -> Swarm | None:
        return self._swarms.get(info_hash)

    def scrape(self, info_hash: bytes) -> ScrapeStats | None:
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return None
        return ScrapeStats(swarm.complete, swarm.incomplete, swarm.downloaded)

    @staticmethod
    def peer_key(req: AnnounceRequest, ident: bytes | None = None) -> bytes:
        if req.transport is Transport.WS:
            return req.peer_id
        return ident if ident is not None else req.peer_id + req.addr.packed

    def announce(self, req: AnnounceRequest, key: str, now: float) -> AnnounceOutcome:
        """Apply one announce to the swarm of ``req.info_hash`` (object ``key``)."""
        swarm = self._swarms.get(req.info_hash)
        if swarm is None:
            if req.event is Event.STOPPED:
                return AnnounceOutcome(complete=0, incomplete=0)
            if len(self._swarms) >= self.max_swarms:
                self.sweep(now)
                if len(self._swarms) >= self.max_swarms:
                    raise AnnounceRejectedError(
                        "swarm_limit", "this tracker holds its maximum number of swarms"
                    )
            swarm = Swarm(req.info_hash, key)
            self._swarms[req.info_hash] = swarm
        self._expire(swarm, now)

        ident = req.peer_id + req.addr.packed
        pkey = self.peer_key(req, ident)
        peer = swarm.peers.get(pkey)
        if (
            peer is not None
            and req.transport is Transport.WS
            and peer.session is not req.session
            and not getattr(peer.session, "closed", True)
        ):
            raise AnnounceRejectedError(
                "peer_id_in_use", "this peer_id is in use by another connection"
            )
        outcome = AnnounceOutcome(complete=0, incomplete=0)
        if req.event is Event.STOPPED:
            if peer is not None:
                self._account(peer, req, outcome)
                self._remove(swarm, pkey, peer)
                outcome.left_swarm = True
            self._drop_if_empty(swarm)
            outcome.complete, outcome.incomplete = swarm.complete, swarm.incomplete
            return outcome

        if peer is None:
            if len(swarm.peers) >= self.max_peers_per_swarm:
                old_key, old = next(iter(swarm.peers.items()))
                self._remove(swarm, old_key, old)
                self.evicted += 1
            peer = Peer(
                ident, req.port, req.transport, req.session, self.locality.network_of(req.addr)
            )
            peer.uploaded, peer.downloaded = req.uploaded, req.downloaded
            swarm.add(pkey, peer)
            self.peer_counts[req.transport] += 1
            outcome.joined = True
        else:
            self._account(peer, req, outcome)
            peer.session = req.session
            if peer.ident != ident:
                # A WebSocket peer's address follows its live connection: re-index it.
                swarm.discard(pkey, peer)
                peer.ident = ident
                peer.net = self.locality.network_of(req.addr)
                peer.compact = ident[20:] + req.port.to_bytes(2, "big")
                swarm.add(pkey, peer)
            else:
                swarm.touch(pkey, peer)  # now the most recently seen
            if peer.port != req.port:
                peer.port = req.port
                peer.compact = ident[20:] + req.port.to_bytes(2, "big")
        peer.expires = now + self.peer_ttl
        done = req.left == 0 or req.event is Event.COMPLETED
        if done and not peer.complete:
            peer.complete = True
            swarm.complete += 1
            if req.event is Event.COMPLETED:
                swarm.downloaded += 1
        elif not done and peer.complete and req.left is not None:
            # A peer that reports bytes left again lost data (evicted it); count it honestly.
            peer.complete = False
            swarm.complete -= 1

        outcome.peers = self.select(swarm, peer, req.addr, req.numwant)
        outcome.complete, outcome.incomplete = swarm.complete, swarm.incomplete
        return outcome

    def leave(self, info_hash: bytes, pkey: bytes, session: object | None) -> bool:
        """Remove a peer when its WebSocket closes; only that session may remove it."""
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return False
        peer = swarm.peers.get(pkey)
        if peer is None or peer.session is not session:
            return False
        self._remove(swarm, pkey, peer)
        self._drop_if_empty(swarm)
        return True

    def select(self, swarm: Swarm, me: Peer, addr: IPAddress, numwant: int) -> list[Peer]:
        """Up to ``numwant`` peers of the same transport, nearest tiers first, random within.

        Tiers: same /24 or /48, same client network, other client networks,
        outside the site's networks. Seeders get no seeders back (they have
        nothing to fetch from them).
        """
        if numwant <= 0:
            return []
        if swarm.groups is not None:
            return self._select_indexed(swarm.groups, me, numwant)
        tiers: tuple[list[Peer], list[Peer], list[Peer], list[Peer]] = ([], [], [], [])
        my_prefix = me.prefix
        my_net = me.net
        for peer in swarm.peers.values():
            if peer is me or peer.transport is not me.transport:
                continue
            if me.complete and peer.complete:
                continue
            if peer.prefix == my_prefix and len(peer.ident) == len(me.ident):
                tiers[0].append(peer)
            elif peer.net >= 0 and peer.net == my_net:
                tiers[1].append(peer)
            elif peer.net >= 0:
                tiers[2].append(peer)
            else:
                tiers[3].append(peer)
        chosen: list[Peer] = []
        for tier in tiers:
            room = numwant - len(chosen)
            if room <= 0:
                break
            if len(tier) <= room:
                self._rng.shuffle(tier)
                chosen.extend(tier)
            else:
                chosen.extend(self._rng.sample(tier, room))
        return chosen

    def _select_indexed(self, groups: _Groups, me: Peer, numwant: int) -> list[Peer]:
        chosen: list[Peer] = []
        seen: set[int] = {id(me)}
        ws = me.transport is Transport.WS
        pools: list[list[Peer]] = []
        near = groups.by_prefix.get(me.prefix_group)
        if near:
            pools.append(near)
        if me.net >= 0:
            same_net = groups.by_net.get(me.net_group)
            if same_net:
                pools.append(same_net)
        others = [
            pool
            for key, pool in groups.by_net.items()
            if (key & 1) == ws and key >= 0 and key != me.net_group
        ]
        self._rng.shuffle(others)
        pools.extend(others)
        outside = groups.by_net.get((-1 << 1) | ws)
        if outside:
            pools.append(outside)
        for pool in pools:
            if len(chosen) >= numwant:
                break
            self._draw(pool, me, chosen, seen, numwant)
        return chosen

    def _draw(
        self, pool: list[Peer], me: Peer, chosen: list[Peer], seen: set[int], numwant: int
    ) -> None:
        """Walk ``pool`` in a random order until ``chosen`` is full.

        The order is ``start + i * stride (mod n)`` with a random stride coprime
        to n: a full permutation from two random numbers, so a draw costs
        O(numwant) instead of one random number per candidate.
        """
        n = len(pool)
        rng = self._rng
        idx = rng.randrange(n)
        stride = 1
        if n > 2:
            stride = rng.randrange(1, n)
            while math.gcd(stride, n) != 1:
                stride = stride % (n - 1) + 1
        skip_seeders = me.complete
        want = numwant - len(chosen)
        seen_add, choose = seen.add, chosen.append
        for _ in range(n):
            peer = pool[idx]
            idx += stride
            if idx >= n:
                idx -= n
            ref = id(peer)
            if ref in seen or (skip_seeders and peer.complete):
                continue
            seen_add(ref)
            choose(peer)
            want -= 1
            if want <= 0:
                return

    def sweep(self, now: float) -> int:
        """Expire silent peers in every swarm and drop empty swarms; returns peers expired."""
        before = self.expired
        for swarm in list(self._swarms.values()):
            self._expire(swarm, now)
            self._drop_if_empty(swarm)
        return self.expired - before

    def _expire(self, swarm: Swarm, now: float) -> None:
        peers = swarm.peers
        while peers:
            pkey, peer = next(iter(peers.items()))
            if peer.expires > now:
                break
            self._remove(swarm, pkey, peer)
            self.expired += 1

    def _remove(self, swarm: Swarm, pkey: bytes, peer: Peer) -> None:
        swarm.discard(pkey, peer)
        if peer.complete:
            swarm.complete -= 1
        self.peer_counts[peer.transport] -= 1
        detach = getattr(peer.session, "detach", None)
        if detach is not None:
            detach(swarm.info_hash, peer.peer_id)

    def _drop_if_empty(self, swarm: Swarm) -> None:
        if not swarm.peers and self._swarms.get(swarm.info_hash) is swarm:
            del self._swarms[swarm.info_hash]

    @staticmethod
    def _account(peer: Peer, req: AnnounceRequest, outcome: AnnounceOutcome) -> None:
        """Client-reported byte counters are cumulative: count the growth, ignore resets."""
        up = req.uploaded - peer.uploaded
        down = req.downloaded - peer.downloaded
        outcome.uploaded_delta = up if 0 < up <= MAX_BYTES_DELTA else 0
        outcome.downloaded_delta = down if 0 < down <= MAX_BYTES_DELTA else 0
        peer.uploaded, peer.downloaded = req.uploaded, req.downloaded
