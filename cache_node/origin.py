"""The S3 origin: the one module of the cache node that talks to S3 (aiobotocore).

What aiobotocore does not do for us, and this module does:

* a total deadline per request and a minimum throughput: aiobotocore's
  ``read_timeout`` is per socket read, so a trickling origin could hold a fill
  forever; the body iterator measures bytes per window and gives up below
  ``minThroughputBytesPerSecond`` after a grace window;
* error classes the load path can act on: 404 → :class:`NotFoundError`,
  412 → :class:`ChangedError` (resume with ``If-Match`` failed: restart from
  zero), everything else → :class:`UpstreamError` (retry with backoff);
* bodies always released: :meth:`_S3Body.release` closes the response even
  when the reader stopped early, so the bounded pool
  (``maxConnections``) never leaks connections;
* the CRC-32 check of a GetObject body is the store's: botocore would
  compute the body's CRC-32 chunk by chunk as it streams, and the store
  computes the CRC-32 of each piece anyway (its piece checksum). The client
  here leaves that one algorithm to the caller (:func:`_leave_crc32_to_us`),
  and :meth:`S3Origin.open` hands the origin's value on in
  :attr:`Opened.crc32`: the store compares the combination of its pieces'
  CRC-32s with it before the commit, so each byte is summed once. Other
  algorithms (SHA-256, ...) stay botocore's.

botocore's own retries stop once headers arrive and never cover a body, so
they are limited to one attempt here; the load path retries (with backoff and
``Range`` + ``If-Match`` resume) under one policy for every upstream.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from cache_node import crc32
from cache_node.config import Origin
from cache_node.store import ObjectInfo
from cache_node.upstream import (
    ChangedError,
    NotFoundError,
    Opened,
    SlowUpstreamError,
    Source,
    UpstreamError,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

CHUNK = 1024 * 1024  # the most one read returns: what aiohttp has buffered, never a wait
THROUGHPUT_WINDOW_SECONDS = 5.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def _leave_crc32_to_us(context: dict[str, Any], **_: Any) -> None:
    """A ``before-call.s3.GetObject`` handler: botocore checks no CRC-32 on this call.

    botocore chose the response algorithms it would check just before this event;
    dropping CRC-32 from them leaves the header in the response (``ChecksumCRC32``)
    for :meth:`S3Origin.open` and :meth:`S3Origin.get_small` to check instead.
    """
    algorithms = context.get("checksum", {}).get("response_algorithms")
    if isinstance(algorithms, list) and "crc32" in algorithms:
        algorithms.remove("crc32")


def _credentials(origin: Origin) -> tuple[str | None, str | None]:
    """Keys from the mounted Secret, or (None, None) for the default AWS chain."""
    if not origin.credentials_dir:
        return None, None
    folder = Path(origin.credentials_dir)
    return (
        (folder / "accessKeyId").read_text().strip(),
        (folder / "secretAccessKey").read_text().strip(),
    )


class _S3Body:
    def __init__(self, response: dict[str, Any], min_throughput: int, key: str) -> None:
        self._stream = response["Body"]
        self._min = min_throughput
        self._key = key

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in chunks, abandoned when it arrives slower than the minimum.

        Throughput is judged per window of :data:`THROUGHPUT_WINDOW_SECONDS`. While
        a window's quota (minimum x window) is still owed, a read may only wait until
        the window ends, so an origin that stalls or trickles a byte now and then
        (never tripping the per-read timeout) is given up at the end of the window,
        not after the total deadline.
        """
        loop = asyncio.get_running_loop()
        window = THROUGHPUT_WINDOW_SECONDS
        quota = self._min * window
        window_start = loop.time()
        window_bytes = 0
        while True:
            deadline = window_start + window if self._min and window_bytes < quota else None
            limit = asyncio.timeout_at(deadline)
            try:
                async with limit:
                    chunk: bytes = await self._stream.read(CHUNK)
            except TimeoutError as exc:
                if limit.expired():
                    raise SlowUpstreamError(
                        f"origin body of {self._key}: {window_bytes} bytes in {window:g}s, "
                        f"below the minimum of {self._min} B/s"
                    ) from exc
                raise UpstreamError(f"origin body of {self._key} timed out: {exc}") from exc
            except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
                raise UpstreamError(f"origin body of {self._key} broke off: {exc}") from exc
            if not chunk:
                return
            yield chunk
            window_bytes += len(chunk)
            now = loop.time()
            elapsed = now - window_start
            if elapsed >= window:
                if self._min and window_bytes / elapsed < self._min:
                    raise SlowUpstreamError(
                        f"origin body of {self._key} at {window_bytes / elapsed:.0f} B/s, "
                        f"below the minimum {self._min} B/s"
                    )
                window_start, window_bytes = now, 0

    async def release(self) -> None:
        self._stream.close()


class S3Origin:
    """An :class:`~cache_node.upstream.Upstream` backed by one S3 bucket."""

    def __init__(self, config: Origin) -> None:
        self.config = config
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    @property
    def name(self) -> str:
        return "origin"

    @property
    def source(self) -> Source:
        return "origin"

    async def start(self) -> None:
        cfg = self.config
        session = get_session()
        access_key, secret_key = _credentials(cfg)
        aio_config = AioConfig(
            connect_timeout=cfg.connect_timeout_seconds,
            read_timeout=cfg.read_timeout_seconds,
            max_pool_connections=cfg.max_connections,
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=cfg.region,
                endpoint_url=cfg.endpoint_url,
                config=aio_config,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
            )
        )
        self._client.meta.events.register("before-call.s3.GetObject", _leave_crc32_to_us)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def open(self, key: str, start: int, if_match: str | None) -> Opened:
        if self._client is None:
            raise RuntimeError("S3Origin.start() was not awaited")
        kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Key": key}
        if start:
            kwargs["Range"] = f"bytes={start}-"
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            response = await self._client.get_object(**kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code", "")
            if status == 404 or code in ("NoSuchKey", "NotFound", "404"):
                raise NotFoundError(f"{key}: not in bucket {self.config.bucket}") from exc
            if status == 412 or code == "PreconditionFailed":
                raise ChangedError(f"{key}: changed at the origin (ETag mismatch)") from exc
            raise UpstreamError(f"{key}: origin answered {status} {code}") from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"{key}: origin unreachable: {exc}") from exc
        resp: dict[str, Any] = dict(response)
        try:
            info, body_start = _info_from(key, resp)
        except UpstreamError:
            resp["Body"].close()
            raise
        if body_start != start:
            resp["Body"].close()
            raise UpstreamError(f"{key}: asked for bytes from {start}, got from {body_start}")
        # S3 sends the whole object's checksum with a GET of all of it, not with a range.
        whole = start == 0 and not resp.get("ContentRange")
        return Opened(
            info=info,
            start=start,
            body=_S3Body(resp, self._min_throughput(), key),
            crc32=crc32.from_s3(resp.get("ChecksumCRC32")) if whole else None,
        )

    def _min_throughput(self) -> int:
        return self.config.min_throughput_bytes_per_second

    # --- catalogue access for pre-positioning (cache_node.prepos) -------------------------

    async def list_objects(self, bucket: str, prefix: str) -> AsyncIterator[tuple[str, int]]:
        """Every ``(key, size)`` under ``prefix``, following ListObjectsV2 pagination."""
        if self._client is None:
            raise RuntimeError("S3Origin.start() was not awaited")
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"], int(obj["Size"])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise UpstreamError(f"listing s3://{bucket}/{prefix} failed: {code}") from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"listing s3://{bucket}/{prefix} failed: {exc}") from exc

    async def get_small(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """A whole small object (a manifest), refusing one larger than ``max_bytes``."""
        if self._client is None:
            raise RuntimeError("S3Origin.start() was not awaited")
        try:
            response = await self._client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code", "")
            if status == 404 or code in ("NoSuchKey", "NotFound", "404"):
                raise NotFoundError(f"s3://{bucket}/{key} does not exist") from exc
            raise UpstreamError(f"s3://{bucket}/{key}: origin answered {status} {code}") from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"s3://{bucket}/{key}: origin unreachable: {exc}") from exc
        body = response["Body"]
        try:
            if int(response.get("ContentLength", 0)) > max_bytes:
                raise UpstreamError(f"s3://{bucket}/{key} is larger than {max_bytes} bytes")
            data: bytes = await body.read()
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"s3://{bucket}/{key}: body broke off: {exc}") from exc
        finally:
            body.close()
        expected = crc32.from_s3(response.get("ChecksumCRC32"))
        if expected is not None and crc32.crc32(data) != expected:
            raise UpstreamError(
                f"s3://{bucket}/{key}: the body does not match the CRC-32 the origin sent"
            )
        return data


def _info_from(key: str, resp: dict[str, Any]) -> tuple[ObjectInfo, int]:
    etag = resp.get("ETag")
    if not etag:
        raise UpstreamError(f"{key}: the origin sent no ETag")
    content_range = resp.get("ContentRange")
    if content_range:
        match = _CONTENT_RANGE.match(content_range)
        if not match:
            raise UpstreamError(f"{key}: unparseable Content-Range {content_range!r}")
        start, size = int(match.group(1)), int(match.group(3))
    else:
        start, size = 0, int(resp["ContentLength"])
    modified = resp.get("LastModified")
    if not isinstance(modified, datetime):
        modified = datetime.now(UTC)
    info = ObjectInfo(
        key=key,
        size=size,
        etag=etag if etag.startswith(('"', "W/")) else f'"{etag}"',
        last_modified=modified.timestamp(),
        content_type=resp.get("ContentType") or "application/octet-stream",
        cache_control=resp.get("CacheControl"),
    )
    return info, start
