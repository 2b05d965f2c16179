"""The small Protocol every fill source implements: owner peer, parent, sibling, origin.

The load path (:mod:`cache_node.loader`) only knows this interface, in the
groupcache manner: local store, then each upstream in order, the origin last.
Peering (issue 6) adds upstreams without touching the load path; tests use
counting fakes of it.

An upstream answers :meth:`Upstream.open` with the object's validators and a
body that yields bytes from ``start``. A resumed request passes ``if_match``
(the ETag of the bytes already held); an upstream whose object changed raises
:class:`ChangedError` and the fill restarts from zero.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from cache_node.store import ObjectInfo

Source = Literal["peer", "parent", "origin"]


class UpstreamError(Exception):
    """A transient failure (connect, timeout, 5xx, reset): retry or try the next source."""


class NotFoundError(UpstreamError):
    """The object does not exist at this source (a definitive answer from the origin)."""


class ChangedError(UpstreamError):
    """The object's ETag no longer matches (412 on a resumed request): restart from zero."""


class SlowUpstreamError(UpstreamError):
    """The body arrived below the configured minimum throughput."""


@dataclass
class Opened:
    """Headers received: the object's validators and its body from ``start``.

    ``crc32`` is the CRC-32 of the whole object when the source sent one with a
    body from byte zero (S3's ``x-amz-checksum-crc32``); the store checks the
    body against it before the commit.
    """

    info: ObjectInfo
    start: int
    body: Body
    crc32: int | None = None


class Body(Protocol):
    def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """Yield the body; raise :class:`UpstreamError` if it breaks off.

        A chunk may be a view into a larger ``bytes`` (never into a buffer that is
        reused): the store writes it without a copy."""

    async def release(self) -> None:
        """Return or close the connection; always called, also after errors."""


class Upstream(Protocol):
    @property
    def name(self) -> str:
        """For logs and metrics: the member, site or ``origin``."""

    @property
    def source(self) -> Source:
        """Which miss class a fill from here counts as."""

    async def open(self, key: str, start: int, if_match: str | None) -> Opened:
        """Request ``key`` from byte ``start`` (0 for the whole object)."""
