"""The fill chain of a pre-positioned key: old owners by peer fill, then the origin.

Every source is wrapped in :class:`Metered`, which does three things to the
bytes that arrive from the network, chunk by chunk and before the loader
writes them:

* takes them from the node's shared :class:`~.throttle.TokenBucket` (the
  rate cap covers every fill stream, peer and origin alike);
* reports them (window budget, metrics);
* keeps the fill's durable partial (:mod:`.partial`) in step with the store
  writer, so a restart resumes: the writer's temp file is linked as the
  partial and the pieces it completed are journaled (the bytes are written
  and hashed once, by the store).

On the first open of a key that has a verified partial from an earlier run,
:class:`Metered` replays the partial from disk and asks its source only for
the rest (``Range`` + ``If-Match``); a 412 drops the partial and the object
is fetched whole.

:class:`HolderPeer` asks a member that held the key before a membership
change, with ``Cache-Control: only-if-cached`` (RFC 9111, 5.2.1.7): a member
that does not hold it answers 504 at once instead of filling it from the
origin on our behalf, which would cost an origin fetch the move should avoid.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import structlog

from cache_node.peering import MEMBER, OBJECTS_PATH, PeerBody
from cache_node.prepos.partial import Journal, Partials, Resume
from cache_node.prepos.throttle import TokenBucket
from cache_node.ranges import parse_http_date
from cache_node.store import ObjectInfo, Writer
from cache_node.upstream import (
    Body,
    ChangedError,
    NotFoundError,
    Opened,
    Source,
    Upstream,
    UpstreamError,
)

log = structlog.get_logger("cache_node.prepos")

LOCAL_CHUNK = 256 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")

OnBytes = Callable[[str, int], None]


class _LocalBody:
    """The verified prefix of a partial, read back from disk."""

    def __init__(self, path: Path, end: int) -> None:
        self._path = path
        self._end = end

    async def chunks(self) -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(os.open, self._path, os.O_RDONLY)
        try:
            offset = 0
            while offset < self._end:
                chunk = await asyncio.to_thread(
                    os.pread, fd, min(LOCAL_CHUNK, self._end - offset), offset
                )
                if not chunk:
                    raise UpstreamError(f"partial {self._path} shrank under us")
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def release(self) -> None:
        return None


class PartialTracker:
    """The durable partial of one pre-positioning fill, shared by the sources of its chain.

    ``writer`` returns the store writer of the fill (``None`` before the headers
    arrived). :meth:`sync` runs whenever the loader has written a piece's last
    byte (:meth:`due`): the first call links the writer's temp file as the
    partial, later ones journal completed pieces; a new or reset writer (the
    object changed) is tracked afresh. Between piece ends there is nothing to
    journal, so the chunks in between cost no call.
    """

    def __init__(self, partials: Partials, writer: Callable[[], Writer | None]) -> None:
        self._partials = partials
        self._writer = writer
        self._journal: Journal | None = None
        self._failed = False

    def _resumable(self) -> Writer | None:
        """The fill's writer when its partial is kept: it exists, no partial error
        happened, and the object has more than one piece (one piece or less is
        simply fetched again)."""
        writer = self._writer()
        if self._failed or writer is None or writer.info.size <= writer.piece_size:
            return None
        return writer

    def split(self, chunk: bytes | memoryview) -> list[bytes | memoryview]:
        """``chunk`` cut at the piece boundaries of the writer (see :meth:`sync`).

        The parts are views of ``chunk``, not copies: a 1 MiB read crosses a piece
        boundary nearly every time."""
        writer = self._resumable()
        if writer is None:
            return [chunk]
        into = writer.written % writer.piece_size
        if into + len(chunk) <= writer.piece_size:
            return [chunk]
        view = memoryview(chunk)
        first = writer.piece_size - into
        step = writer.piece_size
        parts: list[bytes | memoryview] = [view[:first]]
        parts += [view[at : at + step] for at in range(first, len(view), step)]
        return parts

    def due(self) -> bool:
        """Whether the writer's bytes end at a piece boundary or at the body's end."""
        writer = self._resumable()
        if writer is None:
            return False
        written = writer.written
        return written > 0 and (written % writer.piece_size == 0 or written == writer.info.size)

    async def sync(self) -> None:
        """Journal every piece the writer completed (with the checksums it computed).

        Called once a part of :meth:`split` that ends a piece is written, so a piece
        is journaled before a byte of the next one is written: after a crash at
        most the piece in flight is fetched again.
        """
        writer = self._resumable()
        if writer is None:
            return
        journal = self._journal
        if journal is None or not journal.follows(writer):
            if journal is not None:
                journal.close()  # it described a reset writer or an earlier one
            try:
                journal = self._journal = await self._partials.track(writer)
            except OSError as exc:
                self._failed = True  # no partial: a restart refetches this object whole
                log.warning("prepos_partial_unavailable", key=writer.info.key, error=str(exc))
                return
        try:
            journal.sync()
        except OSError as exc:
            self._failed = True
            log.warning("prepos_partial_unavailable", key=writer.info.key, error=str(exc))

    def close(self) -> None:
        """The fill is over for its caller: its journal keeps no descriptor open."""
        if self._journal is not None:
            self._journal.close()


class _MeteredBody:
    def __init__(
        self,
        inner: Body | None,
        prefix: _LocalBody | None,
        bucket: TokenBucket,
        on_bytes: OnBytes,
        source: str,
        tracker: PartialTracker,
    ) -> None:
        self._inner = inner
        self._prefix = prefix
        self._bucket = bucket
        self._on_bytes = on_bytes
        self._source = source
        self._tracker = tracker

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        # The loader writes each chunk before it asks for the next one, so when this
        # generator resumes after a ``yield`` the writer holds every byte yielded so far.
        if self._prefix is not None:
            async for local in self._prefix.chunks():
                yield local
        if self._inner is None:
            return
        tracker, bucket, on_bytes = self._tracker, self._bucket, self._on_bytes
        await tracker.sync()
        async for chunk in self._inner.chunks():
            size = len(chunk)
            await bucket.take(size)
            on_bytes(self._source, size)
            for part in tracker.split(chunk):
                yield part
                if tracker.due():
                    await tracker.sync()

    async def release(self) -> None:
        if self._inner is not None:
            await self._inner.release()


@dataclass
class Metered:
    """Wrap one source of one pre-positioning fill (see the module docstring)."""

    inner: Upstream
    bucket: TokenBucket
    partials: Partials
    tracker: PartialTracker
    on_bytes: OnBytes

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def source(self) -> Source:
        return self.inner.source

    def _body(self, opened: Opened, prefix: _LocalBody | None) -> Body:
        return _MeteredBody(
            opened.body, prefix, self.bucket, self.on_bytes, self.source, self.tracker
        )

    async def open(self, key: str, start: int, if_match: str | None) -> Opened:
        if start == 0 and if_match is None and self.partials.may_hold(key):
            resume = await asyncio.to_thread(self.partials.load, key)
            if resume is not None:
                opened = await self._resume(key, resume)
                if opened is not None:
                    return opened
            opened = await self.inner.open(key, 0, None)
            return replace(opened, body=self._body(opened, None))
        # The loader resumes a body that broke off in this run (same writer, same partial).
        opened = await self.inner.open(key, start, if_match)
        return replace(opened, body=self._body(opened, None))

    async def _resume(self, key: str, resume: Resume) -> Opened | None:
        prefix = _LocalBody(resume.data_path, resume.verified_bytes)
        if resume.verified_bytes >= resume.info.size:
            body = _MeteredBody(None, prefix, self.bucket, self.on_bytes, self.source, self.tracker)
            return Opened(info=resume.info, start=0, body=body)
        try:
            opened = await self.inner.open(key, resume.verified_bytes, resume.info.etag)
        except ChangedError:
            self.partials.drop(key)  # the object changed: fetch it whole
            return None
        if opened.info.size != resume.info.size or opened.info.etag != resume.info.etag:
            await opened.body.release()
            self.partials.drop(key)
            return None
        return Opened(info=resume.info, start=0, body=self._body(opened, prefix))


@dataclass
class HolderPeer:
    """A member that held ``key`` before a membership change, asked only for what it holds."""

    member: str
    base_url: str
    session: aiohttp.ClientSession
    secret: bytes
    me: str

    @property
    def name(self) -> str:
        return f"member {self.member}"

    @property
    def source(self) -> Source:
        return "peer"

    async def open(self, key: str, start: int, if_match: str | None) -> Opened:
        headers = {
            "Authorization": "Bearer " + self.secret.decode(),
            MEMBER: self.me,
            "Cache-Control": "only-if-cached",
        }
        if start:
            headers["Range"] = f"bytes={start}-"
        if if_match:
            headers["If-Match"] = if_match
        url = self.base_url.rstrip("/") + OBJECTS_PATH + urllib.parse.quote(key)
        try:
            resp = await self.session.get(url, headers=headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"{self.name}: unreachable: {exc}") from exc
        try:
            if resp.status in (404, 504):
                raise NotFoundError(f"{self.name}: does not hold {key}")
            if resp.status == 412:
                raise ChangedError(f"{self.name}: {key} changed")
            if resp.status not in (200, 206):
                raise UpstreamError(f"{self.name}: answered {resp.status} for {key}")
            info, body_start = info_from_headers(key, resp.status, resp.headers)
            if body_start != start:
                raise UpstreamError(f"{self.name}: asked from {start}, got from {body_start}")
        except BaseException:
            resp.close()
            raise
        return Opened(info=info, start=start, body=PeerBody(resp, self.name, key))


def info_from_headers(key: str, status: int, headers: Mapping[str, str]) -> tuple[ObjectInfo, int]:
    """Validators and the body's first byte from a member's 200/206 response headers."""
    get = headers.get
    etag = get("ETag")
    if not etag:
        raise UpstreamError(f"peer sent {key} without an ETag")
    if status == 206:
        match = _CONTENT_RANGE.match(get("Content-Range") or "")
        if not match:
            raise UpstreamError(f"peer sent an unusable Content-Range for {key}")
        start, size = int(match.group(1)), int(match.group(3))
    else:
        length = get("Content-Length")
        if length is None or not str(length).isdigit():
            raise UpstreamError(f"peer sent {key} without a Content-Length")
        start, size = 0, int(length)
    modified = parse_http_date(get("Last-Modified") or "") or datetime.now(UTC)
    info = ObjectInfo(
        key=key,
        size=size,
        etag=str(etag),
        last_modified=modified.timestamp(),
        content_type=get("Content-Type") or "application/octet-stream",
        cache_control=get("Cache-Control"),
    )
    return info, start
