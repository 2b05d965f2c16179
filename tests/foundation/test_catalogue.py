"""The synthetic catalogue: realistic sizes, ranks, reproducible bytes, manifests."""

from __future__ import annotations

import csv
import io
import json

from edgefill_devenv.catalogue import (
    MAX_SIZE,
    MIN_SIZE,
    generate,
    manifest,
    object_bytes,
    object_range,
)


def test_sizes_ranks_and_keys() -> None:
    entries = generate(300)
    assert len(entries) == 300
    assert len({e.key for e in entries}) == 300
    assert sorted(e.rank for e in entries) == list(range(1, 301))
    assert all(MIN_SIZE <= e.size <= MAX_SIZE for e in entries)
    assert min(e.size for e in entries) < 1024 * 1024 < max(e.size for e in entries)
    assert all(e.key.endswith(".m4s") for e in entries)


def test_generation_is_reproducible() -> None:
    assert generate(50, seed=3) == generate(50, seed=3)
    assert generate(50, seed=3) != generate(50, seed=4)


def test_object_bytes_are_a_function_of_the_key() -> None:
    a = object_bytes("vod/a", 100_000)
    assert len(a) == 100_000
    assert a == object_bytes("vod/a", 100_000)
    assert a != object_bytes("vod/b", 100_000)
    assert object_bytes("vod/a", 10) == a[:10]


def test_manifests_list_every_key_by_rank() -> None:
    entries = generate(40)
    lines = [json.loads(x) for x in manifest(entries, "jsonl").decode().splitlines()]
    assert [x["rank"] for x in lines] == list(range(1, 41))
    assert {x["key"] for x in lines} == {e.key for e in entries}
    rows = list(csv.DictReader(io.StringIO(manifest(entries, "csv").decode())))
    assert rows[0].keys() == {"key", "size", "rank"}
    assert len(rows) == 40


def test_object_range_matches_the_whole_object() -> None:
    whole = object_bytes("vod/r", 1000)
    for start, end in [(0, 1000), (1, 2), (31, 33), (32, 64), (500, 999), (999, 1000), (5, 5)]:
        assert object_range("vod/r", start, end) == whole[start:end]
