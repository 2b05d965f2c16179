"""The store on a real directory: commits, recovery, verification, budget and eviction."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest

from cache_node import crc32
from cache_node import store as store_module
from cache_node.store import IncompleteBodyError, ObjectInfo, Store, key_digest

PIECE = 16 * 1024


def _info(key: str, size: int) -> ObjectInfo:
    return ObjectInfo(key=key, size=size, etag=f'"{key}"', last_modified=1_700_000_000.0)


def _data(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


async def _put(store: Store, key: str, size: int, *, pinned: bool = False) -> bytes:
    data = _data(key, size)
    writer = store.begin(_info(key, size))
    for i in range(0, size, 5000):
        writer.write(data[i : i + 5000])
    await writer.commit(pinned=pinned, content_set="ns/set" if pinned else None)
    return data


def _crcs(data: bytes, piece: int = PIECE) -> list[str]:
    """The store's piece checksums of ``data``: CRC-32 per piece, 8 hex digits."""
    return [f"{zlib.crc32(data[i : i + piece]):08x}" for i in range(0, len(data), piece)]


def _sha256s(data: bytes, piece: int = PIECE) -> list[str]:
    return [hashlib.sha256(data[i : i + piece]).hexdigest() for i in range(0, len(data), piece)]


def _store(root: Path, max_bytes: int = 10 * 1024 * 1024, policy: str = "lru") -> Store:
    store = Store(root, max_bytes=max_bytes, piece_size=PIECE, policy=policy)  # type: ignore[arg-type]
    store.recover(60)
    return store


async def test_commit_records_piece_hashes_and_survives_a_clean_restart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = await _put(store, "vod/a", 40_000)
    piece_size, hashes = store.piece_hashes("vod/a") or (0, ())
    assert piece_size == PIECE
    assert list(hashes) == _crcs(data)
    store.close()
    again = Store(tmp_path, max_bytes=10 * 1024 * 1024, piece_size=PIECE)
    assert again.recover(60) == []  # clean: nothing to verify
    entry = again.get("vod/a")
    assert entry is not None
    assert entry.verified
    assert entry.data_path.read_bytes() == data


def _open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


async def test_piece_checksums_follow_the_bytes_across_chunks_and_a_reset(
    tmp_path: Path,
) -> None:
    """Each piece's CRC-32 is folded in as its bytes are written, whatever the chunks
    (straddling boundaries, reusable buffers, views); a reset (the origin's object
    changed mid-fill) drops the checksums of the old bytes."""
    store = _store(tmp_path)
    old = _data("old", 5 * PIECE + 77)
    writer = store.begin(_info("vod/r", len(old)))
    for i in range(0, 3 * PIECE + 100, 7777):  # chunks that straddle piece boundaries
        writer.write(old[i : min(i + 7777, 3 * PIECE + 100)])
    assert list(writer.hashed_pieces()) == _crcs(old[: 3 * PIECE])  # the fourth is not whole
    assert writer.hashes_from(1) == _crcs(old[: 3 * PIECE])[1:]
    assert writer.hashes_from(3) == []
    new = _data("new", 4 * PIECE + 5)
    store.resize(writer, _info("vod/r", len(new)))
    assert writer.hashed_pieces() == ()
    buffer = bytearray(new[: PIECE + 3])
    writer.write(buffer)  # a reusable buffer: its owner may change it right after
    buffer[:] = bytes(len(buffer))
    rest = memoryview(new)[PIECE + 3 :]
    for i in range(0, len(rest), 2 * PIECE + 1):  # views larger than a piece
        writer.write(rest[i : i + 2 * PIECE + 1])
    entry = await writer.commit()
    assert list(entry.meta.piece_hashes) == _crcs(new)  # the last, short piece too
    assert entry.data_path.read_bytes() == new
    assert store.get("vod/r") is not None


async def test_a_body_is_checked_against_the_origins_crc32_piece_by_piece(
    tmp_path: Path,
) -> None:
    """Each piece's CRC-32 is computed as it is written; their combination is compared
    with the origin's value (no second pass over the body)."""
    store = _store(tmp_path)
    size = 3 * PIECE + 777
    data = _data("vod/crc", size)
    writer = store.begin(_info("vod/crc", size))
    writer.expect_crc32(zlib.crc32(data))
    for i in range(0, size, 5000):
        writer.write(data[i : i + 5000])
    assert writer.checksum_mismatch() is None
    entry = await writer.commit()
    assert entry.data_path.read_bytes() == data

    damaged = bytearray(data)
    damaged[PIECE + 3] ^= 0x01
    other = store.begin(_info("vod/crc-bad", size))
    other.expect_crc32(zlib.crc32(data))
    with pytest.raises(RuntimeError, match="before the body is whole"):
        other.checksum_mismatch()
    other.write(bytes(damaged))
    reason = other.checksum_mismatch()
    assert reason is not None
    assert "vod/crc-bad" in reason
    assert crc32.to_s3(zlib.crc32(bytes(damaged))) in reason
    other.abort()


async def test_a_crc32_is_expected_before_the_first_byte_and_a_reset_forgets_it(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    writer = store.begin(_info("vod/late", 2 * PIECE))
    assert writer.checksum_mismatch() is None  # nothing to check against
    writer.write(_data("vod/late", PIECE))  # a whole piece: its CRC-32 is computed
    with pytest.raises(ValueError, match="before any byte"):
        writer.expect_crc32(1)
    writer.reset(_info("vod/late", 10))  # the object changed: start again from zero
    assert writer.crc32_expected is None
    writer.expect_crc32(zlib.crc32(b"0123456789"))
    writer.write(b"0123456789")
    assert writer.checksum_mismatch() is None
    writer.abort()


async def test_an_aborted_fill_leaves_no_descriptor_behind(tmp_path: Path) -> None:
    store = _store(tmp_path)
    before = _open_fds()
    for n in range(5):
        data = _data(f"k{n}", 8 * PIECE)
        writer = store.begin(_info(f"vod/k{n}", len(data)))
        writer.write(data[: 6 * PIECE])
        writer.abort()
    assert _open_fds() <= before


async def test_unclean_restart_verifies_and_drops_corrupt_objects(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await _put(store, "vod/good", 30_000)
    await _put(store, "vod/bad", 30_000)
    # No close(): a crash. Flip one byte of a committed object behind the store's back.
    bad = store.peek("vod/bad")
    assert bad is not None
    raw = bytearray(bad.data_path.read_bytes())
    raw[20_000] ^= 0xFF
    bad.data_path.write_bytes(bytes(raw))
    again = Store(tmp_path, max_bytes=10 * 1024 * 1024, piece_size=PIECE)
    unverified = again.recover(60)
    assert {e.key for e in unverified} == {"vod/good", "vod/bad"}
    good_entry = again.get("vod/good")
    bad_entry = again.get("vod/bad")
    assert good_entry is not None
    assert bad_entry is not None
    assert await again.verify(good_entry)
    assert not await again.verify(bad_entry)
    assert "vod/bad" not in again
    assert not bad_entry.data_path.exists()
    assert again.stats.corrupt_objects == 1


async def test_the_sha256_of_pieces_is_computed_on_demand_from_checked_bytes(
    tmp_path: Path,
) -> None:
    """Metas keep CRC-32 piece checksums; the SHA-256 that peer assist signs is read
    back when asked for, each piece checked against its CRC-32 on the way. A piece
    damaged on disk yields no digests and drops the object, as verification does."""
    store = _store(tmp_path)
    data = await _put(store, "vod/sha", 3 * PIECE + 10)
    entry = store.peek("vod/sha")
    assert entry is not None
    assert entry.meta.piece_hash == "crc32"
    assert list(entry.meta.piece_hashes) == _crcs(data)
    assert list(await store.piece_sha256(entry) or ()) == _sha256s(data)

    await _put(store, "vod/rot", 3 * PIECE)
    rot = store.peek("vod/rot")
    assert rot is not None
    raw = bytearray(rot.data_path.read_bytes())
    raw[PIECE + 1] ^= 0x10  # bit rot in the second piece
    rot.data_path.write_bytes(bytes(raw))
    assert await store.piece_sha256(rot) is None
    assert "vod/rot" not in store
    assert store.stats.corrupt_objects == 1


async def test_a_meta_of_version_1_with_sha256_pieces_still_serves_and_verifies(
    tmp_path: Path,
) -> None:
    """A store written before the CRC-32 checksums (meta version 1, SHA-256 per piece)
    is kept across the upgrade: its objects verify against their SHA-256 digests, which
    are also the manifests' digests, and a rewritten meta keeps naming the algorithm."""
    store = _store(tmp_path)
    data = await _put(store, "vod/v1", 2 * PIECE + 5)
    damaged = await _put(store, "vod/v1-bad", 2 * PIECE)
    for key, body in (("vod/v1", data), ("vod/v1-bad", damaged)):
        entry = store.peek(key)
        assert entry is not None
        doc = json.loads(entry.data_path.with_suffix(".meta").read_bytes())
        doc["version"] = 1
        del doc["pieceHash"]
        doc["pieceHashes"] = _sha256s(body)
        entry.data_path.with_suffix(".meta").write_text(json.dumps(doc))
    bad = store.peek("vod/v1-bad")
    assert bad is not None
    bad.data_path.write_bytes(bytes(PIECE) + damaged[PIECE:])
    # No close(): an unclean restart, so both are checked again.
    again = Store(tmp_path, max_bytes=10 * 1024 * 1024, piece_size=PIECE)
    assert {e.key for e in again.recover(60)} == {"vod/v1", "vod/v1-bad"}
    entry = again.peek("vod/v1")
    assert entry is not None
    assert entry.meta.piece_hash == "sha256"
    assert await again.verify(entry)
    assert list(await again.piece_sha256(entry) or ()) == _sha256s(data)
    bad_entry = again.peek("vod/v1-bad")
    assert bad_entry is not None
    assert not await again.verify(bad_entry)
    assert await again.set_placement("vod/v1", pinned=True, content_set="ns/set")
    third = Store(tmp_path, max_bytes=10 * 1024 * 1024, piece_size=PIECE)
    third.recover(60)
    kept = third.peek("vod/v1")
    assert kept is not None
    assert (kept.meta.piece_hash, kept.meta.pinned) == ("sha256", True)
    assert json.loads(kept.data_path.with_suffix(".meta").read_bytes())["pieceHash"] == "sha256"


def test_a_meta_naming_an_unknown_piece_hash_is_not_read() -> None:
    meta = store_module.ObjectMeta(
        info=_info("k", 10), piece_size=PIECE, piece_hashes=("00000000",), stored_at=0.0
    )
    doc = json.loads(meta.to_json())
    assert doc["pieceHash"] == "crc32"
    assert store_module.ObjectMeta.from_json(meta.to_json()) == meta
    doc["pieceHash"] = "md5"
    with pytest.raises(ValueError, match="unknown piece hash 'md5'"):
        store_module.ObjectMeta.from_json(json.dumps(doc).encode())


async def test_recovery_discards_everything_not_committed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await _put(store, "vod/kept", 20_000)
    await _put(store, "vod/short", 20_000)
    objects = tmp_path / "objects"
    short = store.peek("vod/short")
    assert short is not None
    with short.data_path.open("r+b") as fh:
        fh.truncate(10_000)  # data shorter than its meta says
    (objects / "ab").mkdir(exist_ok=True)
    (objects / "ab" / ("ab" + "0" * 62 + ".data")).write_bytes(b"orphan")
    (objects / "cd").mkdir(exist_ok=True)
    (objects / "cd" / ("cd" + "0" * 62 + ".meta")).write_bytes(b"{not json")
    (tmp_path / "tmp" / "x.part").write_bytes(b"half a fill")
    again = Store(tmp_path, max_bytes=10 * 1024 * 1024, piece_size=PIECE)
    again.recover(60)
    assert list(again.keys()) == ["vod/kept"]
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (objects / "ab" / ("ab" + "0" * 62 + ".data")).exists()
    assert again.stats.discarded_files >= 4


async def test_any_subset_of_a_commits_renames_recovers_safely(tmp_path: Path) -> None:
    """A commit fsyncs the directory once, after its renames (old ``.meta`` unlinked,
    body to ``.data``, meta to ``.meta``); a crash before that may keep any subset.
    A ``.meta`` whose ``.data`` rename was lost is discarded; an older ``.meta`` beside a
    newer body of the same length fails its piece hashes after the unclean restart."""
    store = _store(tmp_path)
    await _put(store, "vod/lost-body", 20_000)
    old = store.peek("vod/lost-body")
    assert old is not None
    old.data_path.unlink()  # the body's rename never reached the disk
    # A refetch of a changed object: the new body's rename survived, the meta's did not.
    writer = store.begin(_info("vod/changed", 20_000))
    writer.write(_data("vod/changed", 20_000))
    await writer.commit()
    entry = store.peek("vod/changed")
    assert entry is not None
    older_meta = entry.data_path.with_suffix(".meta")
    entry.data_path.write_bytes(_data("other bytes", 20_000))
    again = Store(tmp_path, max_bytes=10 * 1024 * 1024, piece_size=PIECE)
    unverified = again.recover(60)
    assert "vod/lost-body" not in again
    assert not old.data_path.with_suffix(".meta").exists()
    assert [e.key for e in unverified] == ["vod/changed"]
    assert not await again.verify(unverified[0])
    assert "vod/changed" not in again
    assert not older_meta.exists()


async def test_a_fill_that_is_not_complete_never_commits(tmp_path: Path) -> None:
    store = _store(tmp_path)
    writer = store.begin(_info("vod/x", 10_000))
    writer.write(b"a" * 4000)
    with pytest.raises(IncompleteBodyError):
        await writer.commit()
    with pytest.raises(IncompleteBodyError):
        writer.write(b"b" * 7000)
    writer.abort()
    assert "vod/x" not in store
    assert list((tmp_path / "tmp").iterdir()) == []
    assert store.stats.reserved_bytes == 0
    assert not (
        tmp_path / "objects" / key_digest("vod/x")[:2] / f"{key_digest('vod/x')}.meta"
    ).exists()


@pytest.mark.parametrize("policy", ["lru", "sieve", "s3fifo"])
async def test_budget_evicts_dynamic_before_pinned(tmp_path: Path, policy: str) -> None:
    store = _store(tmp_path, max_bytes=100_000, policy=policy)
    await _put(store, "pinned/1", 30_000, pinned=True)
    await _put(store, "pinned/2", 30_000, pinned=True)
    await _put(store, "dyn/1", 30_000)
    await _put(store, "dyn/2", 30_000)  # over budget: a dynamic object must go
    assert store.stats.bytes <= 100_000
    assert "pinned/1" in store
    assert "pinned/2" in store
    assert store.stats.evictions == {"dynamic": 1, "pinned": 0}
    # No dynamic object is left to give: a miss never evicts pinned content; it is
    # served (cut-through) and not kept.
    await _put(store, "dyn/3", 60_000)
    assert store.stats.bytes <= 100_000
    assert "dyn/3" not in store
    assert "pinned/1" in store
    assert "pinned/2" in store
    assert store.stats.evictions["pinned"] == 0
    # Pre-positioned content makes room among pinned content once nothing dynamic is left.
    await _put(store, "pinned/3", 60_000, pinned=True)
    assert store.stats.bytes <= 100_000
    assert "pinned/3" in store
    assert store.stats.evictions["pinned"] >= 1
    assert store.by_content_set()["ns/set"][0] == sum(1 for k in store if k.startswith("pinned"))


async def test_misses_in_flight_never_evict_pinned_content(tmp_path: Path) -> None:
    """Dynamic fills whose commits have not landed yet hold reservations, not victims:
    the next miss runs over the budget by its own reservation instead of evicting
    pre-positioned objects, and the budget holds again once the fills commit."""
    store = _store(tmp_path, max_bytes=100_000)
    await _put(store, "pinned/1", 40_000, pinned=True)
    await _put(store, "pinned/2", 40_000, pinned=True)
    writers = [store.begin(_info(f"dyn/{i}", 16_000)) for i in range(3)]  # 48 KB in flight
    assert store.stats.evictions["pinned"] == 0
    assert "pinned/1" in store
    assert "pinned/2" in store
    for i, writer in enumerate(writers):
        writer.write(_data(f"dyn/{i}", 16_000))
        await writer.commit()
    assert store.stats.evictions["pinned"] == 0
    assert store.stats.bytes <= 100_000
    assert store.stats.reserved_bytes == 0


async def test_replacing_an_object_keeps_accounting_exact(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await _put(store, "vod/a", 10_000)
    await _put(store, "vod/a", 20_000)
    assert store.stats.objects == 1
    assert store.stats.bytes == 20_000
    assert store.remove("vod/a")
    assert store.stats.bytes == 0
    assert list((tmp_path / "objects").rglob("*.data")) == []
