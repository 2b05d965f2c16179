"""Peering: fill misses from the key's owner in the site, then from other sites.

The load path asks :meth:`Peering.chain` which upstreams to try for a key,
given where the request came from (:class:`Hop`):

* a client request on a non-owner: the members ranked above this node for
  the key (the owner first; the next one when the owner is down), then the
  EdgeSite's parents and siblings in configured order, then the origin;
* on the owner, or for a request that came from a member of this site (the
  member already chose us as owner or fallback): no members at all, so a
  request is never forwarded around the site;
* a request from another site (tier fill) is treated like a client request:
  it reaches this site's owner, which coalesces it with every other miss.

Loop prevention: each cross-site request carries ``X-EdgeFill-Hops`` and
``X-EdgeFill-Via`` (the sites it passed). A site in the via list is never
asked again and beyond ``peering.maxHops`` only the origin remains, so two
sites configured as each other's parent end at the origin.

Siblings are asked only when their cache digest (a Bloom filter of the
site's keys, refreshed every ``digestRefreshSeconds``) says they probably
hold the key; a parent is asked regardless, since it fills on our behalf.

Peer requests authenticate with the site's shared secret (bearer, compared in
constant time); NetworkPolicy keeps the peer port away from clients. A short
connect timeout and a per-target circuit breaker keep a dead member from
slowing every miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import structlog

from cache_node.bloom import BloomFilter
from cache_node.config import Member, UpstreamSite
from cache_node.config import Peering as PeeringConfig
from cache_node.ranges import parse_http_date
from cache_node.ring import rank
from cache_node.store import ObjectInfo
from cache_node.upstream import (
    ChangedError,
    NotFoundError,
    Opened,
    Source,
    Upstream,
    UpstreamError,
)

log = structlog.get_logger("cache_node.peering")

OBJECTS_PATH = "/peer/v1/objects/"
DIGEST_PATH = "/peer/v1/digest"
HOPS = "X-EdgeFill-Hops"
VIA = "X-EdgeFill-Via"
MEMBER = "X-EdgeFill-Member"
BREAKER_FAILURES = 3
BREAKER_OPEN_SECONDS = 5.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass(frozen=True)
class Hop:
    """Where a request came from: a client (no hops), a member, or another site."""

    hops: int = 0
    via: tuple[str, ...] = ()
    from_member: str | None = None


class PeerAuthError(Exception):
    pass


def read_secret(path: str | None) -> bytes | None:
    if not path:
        return None
    secret = Path(path).read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"peer secret in {path} is shorter than 16 bytes")
    return secret


def check_auth(header: str | None, secret: bytes | None) -> None:
    """Raise :class:`PeerAuthError` unless ``Authorization: Bearer <secret>`` matches."""
    if secret is None:
        raise PeerAuthError("peering is not configured on this node (no secret)")
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), secret):
        raise PeerAuthError("peer secret missing or wrong")


def parse_hop(headers: dict[str, str] | object, members: set[str]) -> Hop:
    get = getattr(headers, "get", None)
    assert callable(get)
    try:
        hops = int(get(HOPS) or 0)
    except ValueError:
        hops = 0
    via = tuple(v.strip() for v in (get(VIA) or "").split(",") if v.strip())
    member = get(MEMBER)
    return Hop(
        hops=max(0, hops),
        via=via,
        from_member=member if member in members else None,
    )


class Breaker:
    """Consecutive failures open the circuit for a while; one success closes it."""

    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def check(self, name: str) -> None:
        if self.failures >= BREAKER_FAILURES and time.monotonic() < self.open_until:
            raise UpstreamError(f"{name}: circuit open after {self.failures} failures")

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= BREAKER_FAILURES:
            self.open_until = time.monotonic() + BREAKER_OPEN_SECONDS

    def succeeded(self) -> None:
        self.failures = 0


class PeerBody:
    """A peer's response body as an upstream ``Body``: a body that breaks off mid-way
    is an ``UpstreamError`` (the loader resumes or tries the next source)."""

    def __init__(self, resp: aiohttp.ClientResponse, name: str, key: str) -> None:
        self._resp = resp
        self._name = name
        self._key = key

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_chunked(256 * 1024):
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"{self._name}: body of {self._key} broke off: {exc}") from exc

    async def release(self) -> None:
        self._resp.close()


@dataclass
class PeerUpstream:
    """One member or upstream site, reached over its peer endpoint."""

    name: str
    base_url: str
    kind: Source
    session: aiohttp.ClientSession
    secret: bytes
    headers: dict[str, str]
    breaker: Breaker
    digest: BloomFilter | None = None
    digest_required: bool = False

    @property
    def source(self) -> Source:
        return self.kind

    async def open(self, key: str, start: int, if_match: str | None) -> Opened:
        if self.digest_required and (self.digest is None or key not in self.digest):
            raise NotFoundError(f"{self.name}: digest says it does not hold {key}")
        self.breaker.check(self.name)
        headers = {**self.headers, "Authorization": "Bearer " + self.secret.decode()}
        if start:
            headers["Range"] = f"bytes={start}-"
        if if_match:
            headers["If-Match"] = if_match
        url = self.base_url.rstrip("/") + OBJECTS_PATH + urllib.parse.quote(key)
        try:
            resp = await self.session.get(url, headers=headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.breaker.failed()
            raise UpstreamError(f"{self.name}: unreachable: {exc}") from exc
        try:
            if resp.status == 404:
                self.breaker.succeeded()
                raise NotFoundError(f"{self.name}: no {key}")
            if resp.status == 412:
                raise ChangedError(f"{self.name}: {key} changed")
            if resp.status not in (200, 206):
                self.breaker.failed()
                raise UpstreamError(f"{self.name}: answered {resp.status} for {key}")
            info, body_start = _info_from_headers(key, resp)
            if body_start != start:
                raise UpstreamError(f"{self.name}: asked from {start}, got from {body_start}")
        except BaseException:
            resp.close()
            raise
        self.breaker.succeeded()
        return Opened(info=info, start=start, body=PeerBody(resp, self.name, key))


def _info_from_headers(key: str, resp: aiohttp.ClientResponse) -> tuple[ObjectInfo, int]:
    etag = resp.headers.get("ETag")
    if not etag:
        raise UpstreamError(f"peer sent {key} without an ETag")
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not match:
            raise UpstreamError(f"peer sent an unusable Content-Range for {key}")
        start, size = int(match.group(1)), int(match.group(3))
    else:
        if resp.content_length is None:
            raise UpstreamError(f"peer sent {key} without a Content-Length")
        start, size = 0, resp.content_length
    modified = parse_http_date(resp.headers.get("Last-Modified", "")) or datetime.now(UTC)
    return (
        ObjectInfo(
            key=key,
            size=size,
            etag=etag,
            last_modified=modified.timestamp(),
            content_type=resp.headers.get("Content-Type", "application/octet-stream"),
            cache_control=resp.headers.get("Cache-Control"),
        ),
        start,
    )


@dataclass
class Peering:
    """Membership, upstream sites, and the chain of upstreams for each key."""

    site: str
    me: str
    config: PeeringConfig
    secret: bytes | None
    session: aiohttp.ClientSession | None = None
    breakers: dict[str, Breaker] = field(default_factory=dict)
    site_digests: dict[str, BloomFilter] = field(default_factory=dict)

    @property
    def members(self) -> list[Member]:
        return list(self.config.members)

    def member_names(self) -> set[str]:
        return {m.name for m in self.config.members}

    def update(self, config: PeeringConfig, secret: bytes | None) -> None:
        """Membership or upstreams changed (the ConfigMap was re-rendered)."""
        before = sorted(self.member_names())
        self.config = config
        self.secret = secret
        after = sorted(self.member_names())
        if before != after:
            log.info("peering_members_changed", before=before, after=after)

    def _breaker(self, name: str) -> Breaker:
        return self.breakers.setdefault(name, Breaker())

    def chain(self, key: str, hop: Hop) -> list[Upstream]:
        """Upstreams to try for ``key`` before the origin, in order."""
        if self.session is None or self.secret is None:
            return []
        out: list[Upstream] = []
        members = {m.name: m for m in self.config.members}
        if hop.from_member is None and self.me in members:
            for name in rank(key, members):
                if name == self.me:
                    break
                out.append(
                    PeerUpstream(
                        name=f"member {name}",
                        base_url=members[name].peer_url,
                        kind="peer",
                        session=self.session,
                        secret=self.secret,
                        headers={
                            MEMBER: self.me,
                            HOPS: str(hop.hops),
                            VIA: ", ".join(hop.via),
                        },
                        breaker=self._breaker(name),
                    )
                )
        if hop.hops < self.config.max_hops:
            via = (*hop.via, self.site)
            for site in self.config.upstreams:
                if site.name in via or site.name == self.site:
                    continue
                out.append(self._site_upstream(site, hop.hops + 1, via))
        return out

    def _site_upstream(self, site: UpstreamSite, hops: int, via: tuple[str, ...]) -> PeerUpstream:
        assert self.session is not None
        assert self.secret is not None
        return PeerUpstream(
            name=f"{site.role} {site.name}",
            base_url=site.peer_url,
            kind="parent",
            session=self.session,
            secret=self.secret,
            headers={HOPS: str(hops), VIA: ", ".join(via)},
            breaker=self._breaker("site:" + site.name),
            digest=self.site_digests.get(site.name),
            digest_required=site.role == "sibling",
        )

    async def fetch_digest(self, base_url: str, scope: str) -> BloomFilter | None:
        if self.session is None or self.secret is None:
            return None
        url = f"{base_url.rstrip('/')}{DIGEST_PATH}?scope={scope}"
        headers = {"Authorization": "Bearer " + self.secret.decode()}
        try:
            async with self.session.get(url, headers=headers) as resp:
                if resp.status != 200:
                    return None
                return BloomFilter.from_bytes(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.info("digest_fetch_failed", url=url, error=str(exc))
            return None

    async def refresh_sibling_digests(self) -> None:
        for site in self.config.upstreams:
            if site.role != "sibling":
                continue
            bloom = await self.fetch_digest(site.peer_url, "site")
            if bloom is not None:
                self.site_digests[site.name] = bloom
            else:
                self.site_digests.pop(site.name, None)

    async def digest_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh_sibling_digests()
            await asyncio.sleep(self.config.digest_refresh_seconds)
