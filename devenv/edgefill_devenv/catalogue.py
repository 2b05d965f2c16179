"""A synthetic, reproducible video catalogue for the S3 test origin.

Titles are split into renditions (bitrates) and renditions into segments, the
way HLS/DASH packagers lay out objects: ``<prefix>/title-0007/1080p/seg-00012.m4s``.
Segment sizes follow the rendition's bitrate times a segment duration, so
they span 256 KiB (low renditions) to 16 MiB (high ones). Popularity is Zipf
over titles (each rendition of a title shares its rank neighbourhood), and a
manifest object lists every key with its size and rank, as JSON lines or CSV.

Object bytes are a pure function of the key (:func:`object_bytes`), so tests
can verify any response without keeping the catalogue in memory.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

KiB = 1024
MiB = 1024 * KiB
MIN_SIZE = 256 * KiB
MAX_SIZE = 16 * MiB

# (name, bits per second) for a typical ladder; 4 s segments.
RENDITIONS: tuple[tuple[str, int], ...] = (
    ("360p", 600_000),
    ("720p", 3_000_000),
    ("1080p", 6_000_000),
    ("2160p", 16_000_000),
)
SEGMENT_SECONDS = 4


@dataclass(frozen=True)
class CatalogueObject:
    key: str
    size: int
    rank: int


def object_bytes(key: str, size: int) -> bytes:
    """The content of ``key``: SHA-256 in counter mode, reproducible anywhere."""
    seed = hashlib.sha256(key.encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def object_range(key: str, start: int, end: int) -> bytes:
    """``object_bytes(key, size)[start:end]`` without generating the bytes before ``start``."""
    if end <= start:
        return b""
    seed = hashlib.sha256(key.encode()).digest()
    first, last = start // 32, (end + 31) // 32
    out = b"".join(
        hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() for counter in range(first, last)
    )
    return out[start - first * 32 : end - first * 32]


def generate(
    objects: int, *, prefix: str = "vod", seed: int = 7, segments_per_rendition: int = 8
) -> list[CatalogueObject]:
    """Return ``objects`` catalogue entries with realistic sizes and ranks 1..N."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    entries: list[CatalogueObject] = []
    title = 0
    while len(entries) < objects:
        for rendition, bps in RENDITIONS:
            for seg in range(segments_per_rendition):
                if len(entries) >= objects:
                    break
                nominal = bps * SEGMENT_SECONDS // 8
                size = int(nominal * rng.uniform(0.7, 1.3))
                size = max(MIN_SIZE, min(MAX_SIZE, size))
                key = f"{prefix}/title-{title:04d}/{rendition}/seg-{seg:05d}.m4s"
                entries.append(CatalogueObject(key=key, size=size, rank=0))
        title += 1
    # Zipf-like popularity over titles: lower title numbers are more popular,
    # with noise so ranks interleave renditions.
    scored = sorted(
        entries,
        key=lambda e: (int(e.key.split("/")[1][6:]) + 1) * rng.uniform(0.5, 1.5),
    )
    return [CatalogueObject(e.key, e.size, rank) for rank, e in enumerate(scored, start=1)]


def manifest(entries: list[CatalogueObject], fmt: Literal["jsonl", "csv"] = "jsonl") -> bytes:
    """A manifest listing key, size and rank, ordered by rank."""
    ordered = sorted(entries, key=lambda e: e.rank)
    if fmt == "jsonl":
        return b"".join(
            json.dumps({"key": e.key, "size": e.size, "rank": e.rank}).encode() + b"\n"
            for e in ordered
        )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "size", "rank"])
    for e in ordered:
        writer.writerow([e.key, e.size, e.rank])
    return buf.getvalue().encode()


def iter_uploads(
    entries: list[CatalogueObject],
    manifest_key: str | None,
    manifest_entries: list[CatalogueObject] | None = None,
) -> Iterator[tuple[str, bytes]]:
    for e in entries:
        yield e.key, object_bytes(e.key, e.size)
    if manifest_key:
        listed = entries if manifest_entries is None else manifest_entries
        yield manifest_key, manifest(listed, "csv" if manifest_key.endswith(".csv") else "jsonl")


def seed_bucket(
    endpoint_url: str,
    bucket: str,
    entries: list[CatalogueObject],
    *,
    manifest_key: str | None = None,
    manifest_entries: list[CatalogueObject] | None = None,
    access_key: str = "edgefill-test",
    secret_key: str = "edgefill-test-secret",  # noqa: S107 - test server default
    region: str = "us-east-1",
) -> int:
    """Create ``bucket`` (if missing) and upload the catalogue; returns bytes uploaded."""
    import boto3  # test-only dependency, imported where used

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    total = 0
    for key, body in iter_uploads(entries, manifest_key, manifest_entries):
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        total += len(body)
    return total


def seed_demo(endpoint_url: str, bucket: str, objects: int, popular_share: float = 0.4) -> int:
    """The catalogue ``examples/`` expect: every object, the full manifest
    ``manifests/vod.jsonl`` and ``manifests/popular.jsonl`` (the top ranks)."""
    entries = generate(objects)
    total = seed_bucket(endpoint_url, bucket, entries, manifest_key="manifests/vod.jsonl")
    top = sorted(entries, key=lambda e: e.rank)[: max(1, int(len(entries) * popular_share))]
    total += seed_bucket(
        endpoint_url, bucket, [], manifest_key="manifests/popular.jsonl", manifest_entries=top
    )
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Seed the S3 test origin with a catalogue.")
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--bucket", default="catalogue")
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--prefix", default="vod")
    parser.add_argument("--manifest-key", default="manifests/vod.jsonl")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--examples",
        action="store_true",
        help="the layout examples/ expect (vod/ objects, vod and popular manifests)",
    )
    args = parser.parse_args(argv)
    if args.examples:
        total = seed_demo(args.endpoint_url, args.bucket, args.objects)
        print(
            f"seeded s3://{args.bucket} for examples/: {args.objects} objects, "
            f"{total / MiB:.1f} MiB, manifests/vod.jsonl and manifests/popular.jsonl"
        )
        return 0
    entries = generate(args.objects, prefix=args.prefix, seed=args.seed)
    total = seed_bucket(args.endpoint_url, args.bucket, entries, manifest_key=args.manifest_key)
    print(f"seeded s3://{args.bucket}: {len(entries)} objects, {total / MiB:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
