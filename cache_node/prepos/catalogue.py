"""Resolve a fill-plan entry's source into its catalogue: keys, sizes and ranks.

A source is either S3 prefixes (listed with pagination, every object counts,
rank = listing order) or one manifest object that the publisher ordered by
popularity. Manifests are JSON lines (``{"key": ..., "size": ..., "rank": ...}``
per line) or CSV (``key,size[,rank]``, an optional header row). Without a
rank, a manifest's line order is its rank.

The catalogue is never written into the node config, ``/status`` or any
annotation: it can be millions of lines, so each node reads it from S3 and
keeps only the keys it owns.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from cache_node.config import Source

MAX_MANIFEST_BYTES = 256 * 1024 * 1024


class CatalogueError(ValueError):
    """The manifest or listing cannot be used; the message names the line and the fault."""


@dataclass(frozen=True, order=True)
class Item:
    key: str
    size: int
    rank: int


class Lister(Protocol):
    """What resolution needs from the origin module (implemented by ``S3Origin``)."""

    def list_objects(self, bucket: str, prefix: str) -> AsyncIterator[tuple[str, int]]: ...

    async def get_small(self, bucket: str, key: str, max_bytes: int) -> bytes: ...


def _int_field(value: object, what: str, where: str) -> int:
    if isinstance(value, bool):
        raise CatalogueError(f"{where}: {what} must be an integer, not {value!r}")
    if not isinstance(value, int | str):
        raise CatalogueError(f"{where}: {what} must be an integer, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise CatalogueError(f"{where}: {what} must be an integer, not {value!r}") from None
    if number < 0:
        raise CatalogueError(f"{where}: {what} must not be negative ({number})")
    return number


def _item(key: object, size: object, rank: object, default_rank: int, where: str) -> Item:
    if not isinstance(key, str) or not key.strip("/"):
        raise CatalogueError(f"{where}: key must be a non-empty string, not {key!r}")
    rank_value = default_rank if rank in (None, "") else _int_field(rank, "rank", where)
    return Item(key.lstrip("/"), _int_field(size, "size", where), rank_value)


def parse_jsonl(text: str, name: str = "manifest") -> list[Item]:
    items: list[Item] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CatalogueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(doc, dict):
            raise CatalogueError(f"{where}: expected an object with key and size")
        if "key" not in doc or "size" not in doc:
            raise CatalogueError(f"{where}: needs both 'key' and 'size'")
        items.append(_item(doc["key"], doc["size"], doc.get("rank"), len(items) + 1, where))
    return items


def parse_json_array(text: str, name: str = "manifest") -> list[Item]:
    """A ``.json`` manifest: one JSON array of ``{"key", "size", "rank"?}`` objects."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"{name}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, list):
        raise CatalogueError(f"{name}: a .json manifest must be an array of objects")
    items: list[Item] = []
    for number, entry in enumerate(doc, start=1):
        where = f"{name} entry {number}"
        if not isinstance(entry, dict) or "key" not in entry or "size" not in entry:
            raise CatalogueError(f"{where}: needs an object with both 'key' and 'size'")
        items.append(_item(entry["key"], entry["size"], entry.get("rank"), len(items) + 1, where))
    return items


def parse_csv(text: str, name: str = "manifest") -> list[Item]:
    items: list[Item] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        cells = [cell.strip() for cell in row]
        if number == 1 and cells[0].lower() == "key":
            continue  # header row
        where = f"{name} line {number}"
        if len(cells) not in (2, 3):
            raise CatalogueError(f"{where}: expected key,size[,rank], got {len(cells)} fields")
        rank = cells[2] if len(cells) == 3 else None
        items.append(_item(cells[0], cells[1], rank, len(items) + 1, where))
    return items


def parse_manifest(raw: bytes, key: str) -> list[Item]:
    """Parse a manifest object by its extension: ``.csv``, ``.json`` (one array),
    anything else JSON lines (``.jsonl``, ``.ndjson``)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CatalogueError(f"manifest {key} is not UTF-8 text") from None
    lowered = key.lower()
    if lowered.endswith(".csv"):
        items = parse_csv(text, key)
    elif lowered.endswith(".json"):
        items = parse_json_array(text, key)
    else:
        items = parse_jsonl(text, key)
    return dedupe(items)


def dedupe(items: Iterable[Item]) -> list[Item]:
    """One item per key (its best rank), in rank order."""
    best: dict[str, Item] = {}
    for item in items:
        held = best.get(item.key)
        if held is None or item.rank < held.rank:
            best[item.key] = item
    return sorted(best.values(), key=lambda i: (i.rank, i.key))


async def resolve(source: Source, lister: Lister) -> list[Item]:
    """The whole catalogue of one source (a manifest wins over prefixes when both are set)."""
    if source.manifest_key:
        raw = await lister.get_small(source.bucket, source.manifest_key, MAX_MANIFEST_BYTES)
        return parse_manifest(raw, source.manifest_key)
    items: list[Item] = []
    for prefix in source.prefixes:
        async for key, size in lister.list_objects(source.bucket, prefix):
            if key.endswith("/") and size == 0:
                continue  # a "folder" placeholder object, not content
            items.append(Item(key, size, len(items) + 1))
    return dedupe(items)
