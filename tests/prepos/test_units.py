"""Unit tests: manifests, ownership and order, the token bucket, budgets, partials."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import zlib
from collections import Counter
from pathlib import Path

import pytest

from cache_node.prepos.catalogue import CatalogueError, Item, parse_manifest
from cache_node.prepos.partial import Partials
from cache_node.prepos.plan import Task, holders, ordered, owned, owns
from cache_node.prepos.sources import PartialTracker
from cache_node.prepos.throttle import TokenBucket, WindowBudget
from cache_node.ring import owners
from cache_node.store import ObjectInfo, Store, Writer
from edgefill_devenv.catalogue import generate, manifest

# --- manifests -------------------------------------------------------------------------------


def test_manifest_roundtrip_jsonl_and_csv_from_the_devenv_publisher() -> None:
    entries = generate(40)
    expected = sorted((Item(e.key, e.size, e.rank) for e in entries), key=lambda i: i.rank)
    assert parse_manifest(manifest(entries, "jsonl"), "m/cat.jsonl") == expected
    assert parse_manifest(manifest(entries, "csv"), "m/cat.csv") == expected


def test_json_manifest_is_one_array() -> None:
    """The CRD accepts .json manifest keys: a single JSON array, not JSON lines."""
    raw = b'[{"key": "b", "size": 2, "rank": 2},\n {"key": "a", "size": 1, "rank": 1}]'
    assert parse_manifest(raw, "m/cat.json") == [Item("a", 1, 1), Item("b", 2, 2)]
    with pytest.raises(CatalogueError, match="must be an array"):
        parse_manifest(b'{"key": "a", "size": 1}', "m/cat.json")
    with pytest.raises(CatalogueError, match="entry 2: needs an object"):
        parse_manifest(b'[{"key": "a", "size": 1}, {"key": "b"}]', "m/cat.json")


def test_manifest_without_rank_uses_line_order_and_dedupes() -> None:
    raw = (
        b'{"key": "b", "size": 2}\n\n{"key": "a", "size": 1}\n{"key": "b", "size": 2, "rank": 9}\n'
    )
    assert parse_manifest(raw, "x.jsonl") == [Item("b", 2, 1), Item("a", 1, 2)]
    assert parse_manifest(b"/lead/slash.bin,10\nz,3,\n", "x.csv") == [
        Item("lead/slash.bin", 10, 1),
        Item("z", 3, 2),
    ]


@pytest.mark.parametrize(
    ("raw", "name", "message"),
    [
        (b'{"key": "a"}\n', "m.jsonl", "line 1: needs both 'key' and 'size'"),
        (b'{"key": "a", "size": 1}\nnot json\n', "m.jsonl", "line 2: not JSON"),
        (b'["a", 1]\n', "m.jsonl", "expected an object"),
        (b'{"key": "a", "size": -1}\n', "m.jsonl", "size must not be negative"),
        (b'{"key": "a", "size": true}\n', "m.jsonl", "size must be an integer"),
        (b'{"key": "", "size": 1}\n', "m.jsonl", "key must be a non-empty string"),
        (b"key,size\na,1,2,3\n", "m.csv", r"line 2: expected key,size\[,rank\]"),
        (b"a,big\n", "m.csv", "size must be an integer"),
        (b"a,1,first\n", "m.csv", "rank must be an integer"),
        (b"\xff\xfe", "m.csv", "not UTF-8"),
    ],
)
def test_bad_manifests_name_the_line_and_the_fault(raw: bytes, name: str, message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        parse_manifest(raw, name)


# --- ownership, holders, order -----------------------------------------------------------------


def test_every_key_has_exactly_copies_owners() -> None:
    members = ["cache-0", "cache-1", "cache-2"]
    items = [Item(f"k/{i}", 1, i) for i in range(300)]
    for copies in (1, 2, 3):
        count: Counter[str] = Counter()
        for me in members:
            count.update(i.key for i in owned(items, members, me, copies))
        assert set(count.values()) == {copies}
        assert len(count) == len(items)


def test_join_moves_about_a_quarter_and_only_to_the_new_member() -> None:
    before = ["cache-0", "cache-1", "cache-2"]
    after = [*before, "cache-3"]
    keys = [f"obj/{i}" for i in range(4000)]
    moved = [k for k in keys if owners(k, before, 1) != owners(k, after, 1)]
    assert all(owners(k, after, 1) == ["cache-3"] for k in moved)
    assert 0.20 <= len(moved) / len(keys) <= 0.30
    # The new owner's holders are exactly the old owners of what it takes over.
    for key in moved:
        assert holders(key, "cache-3", after, after, 1) == owners(key, before, 1)


def test_holders_skip_current_co_owners_so_first_fills_use_the_origin() -> None:
    members = ["a", "b", "c"]
    for i in range(200):
        key = f"k{i}"
        for me in owners(key, members, 2):
            # Before any membership change the only holder candidate is a non-owner.
            assert set(holders(key, me, members, members, 2)).isdisjoint(owners(key, members, 2))


def test_holders_include_a_departed_member_from_the_previous_membership() -> None:
    before = ["a", "b", "c", "d"]
    after = ["a", "b", "c"]
    key = next(k for k in (f"k{i}" for i in range(1000)) if owners(k, before, 1) == ["d"])
    new_owner = owners(key, after, 1)[0]
    assert "d" in holders(key, new_owner, after, before, 1)


def test_single_node_without_members_owns_everything_and_outsider_nothing() -> None:
    assert owns("x", [], "me", 1)
    assert not owns("x", ["a", "b"], "me", 1)


def test_fill_order_priority_then_rank_then_key() -> None:
    tasks = [
        Task("ns/low", 10, Item("a", 1, 1)),
        Task("ns/high", 500, Item("z", 1, 3)),
        Task("ns/high", 500, Item("y", 1, 2)),
        Task("ns/high", 500, Item("x", 1, 2)),
    ]
    assert [t.key for t in ordered(tasks)] == ["x", "y", "z", "a"]


# --- token bucket and budget --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_token_bucket_holds_the_average_rate_across_streams() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.sleep)
    for _ in range(50):  # several "streams" interleaved; each takes 64-byte chunks
        await bucket.take(64)
        await bucket.take(64)
    sent = 100 * 64
    # Bytes beyond the burst need (sent - burst) / rate seconds, and no more.
    assert clock.now == pytest.approx((sent - 100) / 1000)


async def test_token_bucket_refills_up_to_the_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=500, clock=clock, sleep=clock.sleep)
    clock.now = 100.0  # idle for a long time: at most the burst is banked
    assert bucket.debit(500) == 0
    assert bucket.debit(100) == pytest.approx(0.1)
    bucket.set_rate(2000, burst=500)
    assert bucket.rate == 2000
    with pytest.raises(ValueError, match="positive"):
        bucket.set_rate(0)


def test_window_budget_admits_whole_objects_and_resets_per_window() -> None:
    budget = WindowBudget(1000)
    assert budget.admits("w1", 1000)
    budget.charge("w1", 700)
    assert not budget.admits("w1", 301)
    assert budget.admits("w1", 300)
    assert budget.remaining("w1") == 300
    assert budget.remaining("w2") == 1000
    for i in range(5):
        budget.charge(f"w{i + 3}", 1)
    assert len(budget.used) <= 2
    assert WindowBudget(None).admits("w", 10**15)


# --- partials ----------------------------------------------------------------------------------


def _info(key: str, data: bytes, etag: str = '"e1"') -> ObjectInfo:
    return ObjectInfo(key=key, size=len(data), etag=etag, last_modified=0.0)


def _writer(tmp_path: Path, info: ObjectInfo, piece: int) -> Writer:
    """A real store writer (a fill in progress) in a recovered store under ``tmp_path``."""
    store = Store(tmp_path / "store", 1024 * 1024, piece)
    store.recover(30.0)
    return store.begin(info, piece)


def _part(tmp_path: Path, key: str) -> Path:
    return (
        tmp_path
        / "store"
        / "prepos"
        / "partial"
        / (hashlib.sha256(key.encode()).hexdigest() + ".part")
    )


async def test_partial_resumes_from_the_last_complete_verified_piece(tmp_path: Path) -> None:
    partials = Partials(tmp_path / "store" / "prepos" / "partial")
    data = bytes(range(256)) * 40  # 10240 bytes, pieces of 1024
    writer = _writer(tmp_path, _info("a/b", data), 1024)
    journal = await partials.track(writer)
    writer.write(data[:3000])  # pieces 0 and 1 complete, piece 2 in flight
    journal.sync()
    # The partial is the writer's own file under a second name: written once.
    assert _part(tmp_path, "a/b").stat().st_ino == writer.path.stat().st_ino
    writer.abort()  # a crash: the store drops its temp name, the partial keeps the bytes
    resume = partials.load("a/b")
    assert resume is not None
    assert resume.verified_bytes == 2048
    assert resume.info.etag == '"e1"'
    assert resume.data_path.read_bytes()[:2048] == data[:2048]
    # A new run replays the prefix into a new writer, tracks it, and finishes.
    again = _writer(tmp_path / "run2", _info("a/b", data), 1024)
    again.write(resume.data_path.read_bytes()[:2048])
    journal = await partials.track(again)
    assert journal.pieces == 2
    again.write(data[2048:])
    journal.sync()
    done = partials.load("a/b")
    assert done is not None
    assert done.verified_bytes == len(data)  # the short last piece is journaled too
    assert done.data_path.read_bytes() == data
    assert partials.held_keys() == ["a/b"]
    partials.drop("a/b")
    assert partials.load("a/b") is None
    assert partials.held_keys() == []


async def test_a_fill_journals_each_piece_before_writing_the_next(tmp_path: Path) -> None:
    """The loader's view of a pre-positioning fill: parts of :meth:`PartialTracker.split`,
    each written then synced. Whatever instant a crash hits, the bytes written but not
    journaled stay within one piece (the issue's resume bound)."""
    partials = Partials(tmp_path / "store" / "prepos" / "partial")
    data = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, pieces of 1024
    writer = _writer(tmp_path, _info("a/c", data), 1024)
    tracker = PartialTracker(partials, lambda: writer)
    await tracker.sync()
    journal = partials.root / (hashlib.sha256(b"a/c").hexdigest() + ".journal")
    worst = 0
    for at in range(0, len(data), 2500):  # chunks larger than a piece, across boundaries
        for part in tracker.split(data[at : at + 2500]):
            assert len(part) <= 1024
            writer.write(part)
            journaled = len(journal.read_bytes().splitlines()) - 1
            worst = max(worst, writer.written - journaled * 1024)
            if tracker.due():  # as the fill does: only a piece's end has anything to journal
                await tracker.sync()
    assert worst <= 1024
    assert len(journal.read_bytes().splitlines()) - 1 == 11  # every piece, the short one too
    entry = await writer.commit()
    assert entry.data_path.read_bytes() == data
    resume = partials.load("a/c")
    assert resume is not None
    assert resume.verified_bytes == len(data)


def _descriptors_on(path: Path) -> int:
    """How many of this process's descriptors name ``path`` (Linux: /proc/self/fd)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            if fd.readlink() == path.resolve():
                count += 1
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
async def test_the_journal_keeps_one_descriptor_until_its_last_piece(tmp_path: Path) -> None:
    """One open for all of a fill's appends, none left once every piece is journaled."""
    partials = Partials(tmp_path / "partial")
    data = bytes(range(256)) * 12  # 3072 bytes: pieces of 1024
    writer = _writer(tmp_path, _info("k/open", data), 1024)
    journal = await partials.track(writer)
    assert _descriptors_on(journal.path) == 0  # nothing appended yet
    writer.write(data[:1024])
    journal.sync()
    assert _descriptors_on(journal.path) == 1
    writer.write(data[1024:2048])
    journal.sync()
    assert _descriptors_on(journal.path) == 1  # the same one, not one more
    writer.write(data[2048:])
    journal.sync()
    assert _descriptors_on(journal.path) == 0
    assert len(journal.path.read_bytes().splitlines()) == 1 + 3
    await writer.commit()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
async def test_a_closed_journal_still_appends_but_holds_nothing(tmp_path: Path) -> None:
    """A fill that goes on after its tracker is closed (its caller gave up waiting) keeps
    journaling, opening the journal per append, and leaves no descriptor behind."""
    partials = Partials(tmp_path / "partial")
    data = b"z" * 4096
    writer = _writer(tmp_path, _info("k/closed", data), 1024)
    tracker = PartialTracker(partials, lambda: writer)
    await tracker.sync()  # links the partial, writes the journal's header
    for at in (0, 1024):
        writer.write(data[at : at + 1024])
        await tracker.sync()
    journal = partials.root / (hashlib.sha256(b"k/closed").hexdigest() + ".journal")
    assert _descriptors_on(journal) == 1
    tracker.close()
    assert _descriptors_on(journal) == 0
    writer.write(data[2048:3072])
    await tracker.sync()
    assert _descriptors_on(journal) == 0
    assert len(journal.read_bytes().splitlines()) == 1 + 3  # the third piece landed too
    resume = partials.load("k/closed")
    assert resume is not None
    assert resume.verified_bytes == 3072
    writer.abort()


async def test_the_tracker_is_due_at_each_piece_end_and_the_bodys_end(tmp_path: Path) -> None:
    partials = Partials(tmp_path / "partial")
    data = b"d" * 2500  # pieces of 1024: two whole ones and a short one
    writer = _writer(tmp_path, _info("k", data), 1024)
    tracker = PartialTracker(partials, lambda: writer)
    assert not tracker.due()  # nothing written yet
    due = []
    for at in range(0, len(data), 256):
        for part in tracker.split(data[at : at + 256]):
            writer.write(part)
            due.append((writer.written, tracker.due()))
    assert [written for written, is_due in due if is_due] == [1024, 2048, 2500]
    small = _writer(tmp_path / "small", _info("s", b"s" * 1024), 1024)
    small.write(b"s" * 1024)
    assert not PartialTracker(partials, lambda: small).due()  # one piece: never journaled
    await writer.commit()
    await small.commit()


async def test_tracking_off_the_loop_enters_the_index_before_its_file_work(
    tmp_path: Path,
) -> None:
    """Tracking (:meth:`Partials.track`) links and journals in a thread; the key is in the index
    from its first step, so :meth:`Partials.may_hold` is never wrong about a partial that
    exists, not even while (or if the caller is cancelled while) the thread works."""
    partials = Partials(tmp_path / "partial")
    data = b"q" * 3000
    writer = _writer(tmp_path, _info("a/q", data), 1024)
    writer.write(data[:2048])
    task = asyncio.create_task(partials.track(writer))
    await asyncio.sleep(0)  # the task ran up to its thread hop
    assert partials.may_hold("a/q")
    journal = await task
    assert journal.pieces == 2
    assert journal.follows(writer)
    assert (partials.root / (hashlib.sha256(b"a/q").hexdigest() + ".part")).exists()
    writer.abort()
    resume = partials.load("a/q")
    assert resume is not None
    assert resume.verified_bytes == 2048


async def test_a_reset_writer_is_not_followed_by_its_old_journal(tmp_path: Path) -> None:
    partials = Partials(tmp_path / "partial")
    data = b"y" * 4096
    writer = _writer(tmp_path, _info("k", data), 1024)
    writer.write(data[:2048])
    journal = await partials.track(writer)
    assert journal.follows(writer)
    writer.reset(_info("k", data, etag='"e2"'))  # the object changed mid-fill
    assert not journal.follows(writer)


async def test_partial_with_a_corrupt_piece_keeps_only_the_prefix_before_it(tmp_path: Path) -> None:
    partials = Partials(tmp_path / "store" / "prepos" / "partial")
    data = b"x" * 4096
    writer = _writer(tmp_path, _info("k", data), 1024)
    journal = await partials.track(writer)
    writer.write(data)
    journal.sync()
    writer.abort()
    part = _part(tmp_path, "k")
    raw = bytearray(part.read_bytes())
    raw[1500] ^= 0xFF  # damage piece 1 (a page lost at a power cut)
    part.write_bytes(bytes(raw))
    resume = partials.load("k")
    assert resume is not None
    assert resume.verified_bytes == 1024


def test_journals_name_their_piece_checksum_and_older_sha256_journals_still_resume(
    tmp_path: Path,
) -> None:
    """A journal's header names its checksum (CRC-32, the store writer's own); one
    written before that (no name: SHA-256 lines) resumes as before, and one naming an
    algorithm this node does not know is dropped, not trusted."""
    root = tmp_path / "partial"
    root.mkdir()
    data = bytes(range(256)) * 12  # 3072 bytes, pieces of 1024
    info = _info("k", data)
    digest = hashlib.sha256(b"k").hexdigest()
    (root / f"{digest}.part").write_bytes(data)
    header = {"info": dataclasses.asdict(info), "pieceSize": 1024}
    journal = root / f"{digest}.journal"

    def write(header: dict[str, object], lines: list[str]) -> None:
        journal.write_bytes(b"\n".join([json.dumps(header).encode(), *map(str.encode, lines)]))

    sha = [hashlib.sha256(data[i : i + 1024]).hexdigest() for i in (0, 1024)]
    write(header, sha)  # a journal from before the CRC-32 checksums
    resume = Partials(root).load("k")
    assert resume is not None
    assert resume.verified_bytes == 2048
    crc = [f"{zlib.crc32(data[i : i + 1024]):08x}" for i in (0, 1024, 2048)]
    write({**header, "pieceHash": "crc32"}, crc)
    resume = Partials(root).load("k")
    assert resume is not None
    assert resume.verified_bytes == 3072
    write({**header, "pieceHash": "crc32"}, sha)  # digests of another algorithm
    assert Partials(root).load("k") is None
    (root / f"{digest}.part").write_bytes(data)
    write({**header, "pieceHash": "md5"}, crc)
    assert Partials(root).load("k") is None
    assert not journal.exists()


async def test_a_tracked_journal_names_crc32_and_holds_the_writers_checksums(
    tmp_path: Path,
) -> None:
    partials = Partials(tmp_path / "store" / "prepos" / "partial")
    data = bytes(range(256)) * 8  # 2048 bytes, pieces of 1024
    writer = _writer(tmp_path, _info("a/crc", data), 1024)
    journal = await partials.track(writer)
    writer.write(data)
    journal.sync()
    lines = journal.path.read_bytes().splitlines()
    assert json.loads(lines[0])["pieceHash"] == "crc32"
    assert [line.decode() for line in lines[1:]] == [
        f"{zlib.crc32(data[i : i + 1024]):08x}" for i in (0, 1024)
    ]
    writer.abort()


def test_unreadable_partial_is_dropped(tmp_path: Path) -> None:
    partials = Partials(tmp_path / "partial")
    (tmp_path / "partial").mkdir()
    journal = tmp_path / "partial" / (hashlib.sha256(b"k").hexdigest() + ".journal")
    journal.write_bytes(b"{not json\n")
    assert partials.load("k") is None
    assert not journal.exists()


async def test_the_partials_index_knows_which_keys_may_have_a_partial(tmp_path: Path) -> None:
    """A fill asks :meth:`Partials.may_hold` before reading a partial from disk: the index
    follows track and drop, and a new run (a restart) reads it back from the folder."""
    root = tmp_path / "store" / "prepos" / "partial"
    partials = Partials(root)  # no folder yet
    assert not partials.may_hold("a/b")
    data = b"z" * 4096
    writer = _writer(tmp_path, _info("a/b", data), 1024)
    await partials.track(writer)
    assert partials.may_hold("a/b")
    assert not partials.may_hold("a/c")
    assert Partials(root).may_hold("a/b")  # what a restarted node sees
    partials.drop("a/b")
    assert not partials.may_hold("a/b")
    assert not Partials(root).may_hold("a/b")
    writer.abort()


def test_a_part_without_a_journal_is_swept(tmp_path: Path) -> None:
    """A crash between linking the ``.part`` and writing its journal leaves bytes nobody
    can verify: the first sweep of the next run removes them (and temp files)."""
    root = tmp_path / "partial"
    root.mkdir()
    digest = hashlib.sha256(b"k").hexdigest()
    (root / f"{digest}.part").write_bytes(b"x" * 100)
    (root / f"{digest}.journal.abc.tmp").write_bytes(b"{}")
    kept = hashlib.sha256(b"kept").hexdigest()
    (root / f"{kept}.part").write_bytes(b"y")
    (root / f"{kept}.journal").write_bytes(b"{}\n")
    assert Partials(root).sweep_temporaries() == 2
    assert sorted(p.name for p in root.iterdir()) == [f"{kept}.journal", f"{kept}.part"]
