"""Build a ContentSet manifest from an S3 listing and publish it next to the objects.

A manifest lists ``key``, ``size`` and an optional popularity ``rank`` (JSON
lines, or CSV with a header), the format cache nodes read for a ContentSet
whose source is ``manifestKey``. Ranks come from a popularity file (one key
per line, most popular first); keys it does not name follow, by key, unranked.

Building is pure (:func:`build`); listing and uploading use aiobotocore with
the standard AWS credential chain (environment variables, profile, role).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from aiobotocore.session import get_session

Format = Literal["jsonl", "csv"]


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    rank: int | None = None


def build(
    listing: Iterable[tuple[str, int]], popularity: Sequence[str] = (), fmt: Format = "jsonl"
) -> bytes:
    """Manifest bytes: ranked keys first (by rank), then the rest by key."""
    ranks: dict[str, int] = {}
    for key in popularity:
        ranks.setdefault(key, len(ranks) + 1)
    entries = [Entry(k, s, ranks.get(k)) for k, s in listing]
    entries.sort(key=lambda e: (e.rank is None, e.rank or 0, e.key))
    if fmt == "jsonl":
        lines = []
        for e in entries:
            doc: dict[str, object] = {"key": e.key, "size": e.size}
            if e.rank is not None:
                doc["rank"] = e.rank
            lines.append(json.dumps(doc, separators=(",", ":")) + "\n")
        return "".join(lines).encode()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "size", "rank"])
    for e in entries:
        writer.writerow([e.key, e.size, "" if e.rank is None else e.rank])
    return buf.getvalue().encode()


async def list_prefixes(
    bucket: str, prefixes: Sequence[str], *, endpoint_url: str | None, region: str
) -> list[tuple[str, int]]:
    """Every (key, size) under the prefixes, following pagination."""
    session = get_session()
    out: list[tuple[str, int]] = []
    async with session.create_client("s3", endpoint_url=endpoint_url, region_name=region) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        for prefix in prefixes:
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                out.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
    return out


async def publish(
    bucket: str, key: str, body: bytes, *, endpoint_url: str | None, region: str
) -> None:
    session = get_session()
    content_type = "text/csv" if key.endswith(".csv") else "application/x-ndjson"
    async with session.create_client("s3", endpoint_url=endpoint_url, region_name=region) as s3:
        await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
