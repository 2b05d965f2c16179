"""The on-disk object store: pieces, hashes, crash-safe commits, a byte budget.

Layout under ``store.path``::

    objects/ab/<sha256(key)>.data   the object's bytes
    objects/ab/<sha256(key)>.meta   JSON: key, size, validators, piece size and
                                    the CRC-32 of every piece (the commit mark)
    tmp/<random>.part               fills in progress (wiped on start)
    CLEAN                           present only after an orderly shutdown

File names are hashes of the key, so no key, however spelled, names a path
outside ``objects/`` (traversal is impossible by construction).

Commit protocol (the nginx proxy_cache discipline, made power-loss safe): the
body is written to ``tmp/``, its length checked against the origin's, and
fsynced; the meta document is written to ``tmp/`` and fsynced; an older
copy's ``.meta`` is unlinked, the body renamed to ``.data``, the meta renamed
to ``.meta``, and the directory fsynced once. The ``.meta`` rename is the
commit point: an object without it does not exist. A crash before the
directory reached the disk can leave any subset of those three entry changes
(POSIX does not order them): recovery discards a ``.meta`` without its
``.data``, and one beside other bytes (an older meta over a newer body)
fails the piece checksums every object is checked against after a crash.

Recovery on start (time bounded, metadata only) deletes ``tmp/``, orphan
``.data`` files, unreadable ``.meta`` files and objects whose data length
differs. When ``CLEAN`` is absent (a crash, a SIGKILL, a power cut) every
recovered object is marked *unverified*: it is re-checked piece by piece
before it is first served, and a background task verifies the rest; a piece
that does not match its checksum deletes the object, which the next request
refetches. So a partial or corrupt object is never served as complete.

Pieces are the unit of integrity here and of peer assist elsewhere. The
store's piece checksum is CRC-32 (:data:`PIECE_HASH`): it guards against
damage (a torn write, a bad sector, a meta beside the wrong body), not against
an adversary, and costs a tenth of SHA-256 per byte, so a fill spends its CPU
on moving bytes. The SHA-256 of each piece, which peer assist's signed
manifests need (end users' peers are not trusted), is computed when a manifest
is first asked for (:meth:`Store.piece_sha256`), from bytes checked against
the CRC-32s on the way. Metas written before (version 1) carry SHA-256 piece
hashes and are checked with those.

The byte budget counts committed objects plus reservations of fills in
progress. Dynamic (miss-filled) objects are evicted before pinned
(pre-positioned) ones, each class ordered by the configured policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cache_node import crc32
from cache_node.eviction import Policy, PolicyName, make_policy

META_VERSION = 2
PIECE_HASH = "crc32"  # the piece checksum of metas and partial journals written now
PIECE_HASHES = frozenset({"crc32", "sha256"})  # those a store reads (sha256: meta version 1)
CLEAN_MARK = "CLEAN"


class StoreError(Exception):
    pass


class IncompleteBodyError(StoreError):
    """The body ended before (or ran past) the length the origin announced."""


class ChecksumMismatchError(StoreError):
    """The body's CRC-32 differs from the one the origin sent: it was damaged on the way."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the origin told us about an object: enough to answer any request."""

    key: str
    size: int
    etag: str
    last_modified: float  # Unix seconds
    content_type: str = "application/octet-stream"
    cache_control: str | None = None


def _crc32_hex(value: int) -> str:
    """A piece's CRC-32 as metas and journals write it: 8 lowercase hex digits."""
    return f"{value:08x}"


def piece_digest(algorithm: str, data: bytes | memoryview) -> str:
    """The hex digest of one piece: ``crc32`` (8 hex digits) or ``sha256`` (64)."""
    if algorithm == "crc32":
        return _crc32_hex(crc32.crc32(data))
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    raise ValueError(f"unknown piece hash {algorithm!r}")


@dataclass(frozen=True)
class ObjectMeta:
    info: ObjectInfo
    piece_size: int
    piece_hashes: tuple[str, ...]  # hex digest per piece, of the piece_hash algorithm
    stored_at: float  # Unix seconds, for Age
    pinned: bool = False
    content_set: str | None = None
    piece_hash: str = PIECE_HASH  # "crc32", or "sha256" in metas of version 1

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "version": META_VERSION,
            "info": asdict(self.info),
            "pieceSize": self.piece_size,
            "pieceHash": self.piece_hash,
            "pieceHashes": list(self.piece_hashes),
            "storedAt": self.stored_at,
            "pinned": self.pinned,
            "contentSet": self.content_set,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ObjectMeta:
        doc = json.loads(raw)
        version = doc.get("version")
        if version == 1:  # before the CRC-32 piece checksums: SHA-256 per piece
            algorithm = "sha256"
        elif version == META_VERSION:
            algorithm = doc["pieceHash"]
        else:
            raise ValueError(f"unknown meta version {version!r}")
        if algorithm not in PIECE_HASHES:
            raise ValueError(f"unknown piece hash {algorithm!r}")
        info = ObjectInfo(**doc["info"])
        meta = cls(
            info=info,
            piece_size=int(doc["pieceSize"]),
            piece_hashes=tuple(str(h) for h in doc["pieceHashes"]),
            stored_at=float(doc["storedAt"]),
            pinned=bool(doc["pinned"]),
            content_set=doc.get("contentSet"),
            piece_hash=str(algorithm),
        )
        if meta.piece_size <= 0 or len(meta.piece_hashes) != piece_count(
            info.size, meta.piece_size
        ):
            raise ValueError("piece hashes do not match the object size")
        return meta


def piece_count(size: int, piece_size: int) -> int:
    return (size + piece_size - 1) // piece_size


@dataclass
class Entry:
    """A committed object in the index."""

    meta: ObjectMeta
    data_path: Path
    verified: bool
    # Per-object values derived by the layers above (e.g. preformatted HTTP headers), so
    # the hit path does not recompute them; dropped with the entry.
    derived: dict[str, object] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.meta.info.key

    @property
    def size(self) -> int:
        return self.meta.info.size


@dataclass
class StoreStats:
    bytes: int = 0
    objects: int = 0
    pinned_bytes: int = 0
    pinned_objects: int = 0
    reserved_bytes: int = 0
    evictions: dict[str, int] = field(default_factory=lambda: {"dynamic": 0, "pinned": 0})
    evicted_bytes: int = 0
    corrupt_objects: int = 0
    recovered_objects: int = 0
    discarded_files: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Writer:
    """A fill in progress: bytes go to a temp file; each piece is checked as it is written.

    Readers of a fill in progress (cut-through) open :attr:`path` themselves and
    read up to :attr:`written`; the file stays readable through their open
    descriptor after it is renamed on commit or unlinked on abort.

    :meth:`write` writes on the caller's thread, so :attr:`written` bytes are
    always in the file, and folds the bytes into their piece's checksum (CRC-32,
    :data:`PIECE_HASH`) on the way: zlib-ng's CRC-32 costs about 70 us per MiB,
    less than handing a piece to a worker thread and waiting for it did (the
    hand-offs contend for the GIL with the event loop). :meth:`hashed_pieces` is
    the checksums of the pieces complete so far.

    When the origin sent the body's CRC-32 (:meth:`expect_crc32`),
    :meth:`checksum_mismatch` compares the combination of the pieces' CRC-32s
    with it (botocore would have done this on the loop as the body streamed; see
    :mod:`cache_node.crc32`).
    """

    def __init__(
        self, store: Store, info: ObjectInfo, piece_size: int, path: Path, *, pinned: bool = False
    ) -> None:
        self.store = store
        self.info = info
        self.piece_size = piece_size
        # Pre-positioned content may make room by evicting other pinned content;
        # a dynamic (miss) fill never does.
        self.pinned = pinned
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        self.written = 0
        self.final_path: Path | None = None  # set just before the commit renames the file
        self._crcs: list[int] = []  # the CRC-32 of each complete piece
        self._crc = 0  # the CRC-32 of the piece being written, so far
        self.crc32_expected: int | None = None  # the origin's CRC-32 of the whole body
        self._closed = False

    def write(self, chunk: bytes | memoryview) -> None:
        if self.written + len(chunk) > self.info.size:
            raise IncompleteBodyError(
                f"{self.info.key}: body longer than the announced {self.info.size} bytes"
            )
        rest = memoryview(chunk).cast("B")
        while rest:
            n = os.pwrite(self._fd, rest, self.written)
            self._checksum(rest[:n], self.written)  # what is written is summed, no more
            self.written += n
            rest = rest[n:]

    def _checksum(self, view: memoryview, at: int) -> None:
        """Fold ``view``, written at object offset ``at``, into its pieces' CRC-32s."""
        piece = self.piece_size
        pos = 0
        while pos < len(view):
            end = min((len(self._crcs) + 1) * piece, self.info.size)  # this piece's end
            take = min(len(view) - pos, end - (at + pos))
            self._crc = crc32.crc32(view[pos : pos + take], self._crc)
            pos += take
            if at + pos == end:  # the piece is complete
                self._crcs.append(self._crc)
                self._crc = 0

    def expect_crc32(self, value: int | None) -> None:
        """Check the body against ``value``, the CRC-32 of the whole object the origin
        sent (``None``: there is none to check). Only before the first byte is written:
        the checksum is of the whole body this writer receives."""
        if self.written:
            raise ValueError(f"{self.info.key}: a checksum is expected before any byte")
        self.crc32_expected = value

    def checksum_mismatch(self) -> str | None:
        """Why the written body does not match the origin's CRC-32, or ``None``.

        Call once the whole body is written.
        """
        expected = self.crc32_expected
        if expected is None:
            return None
        if self.written != self.info.size:
            raise RuntimeError(f"{self.info.key}: the CRC-32 is asked before the body is whole")
        piece = self.piece_size
        parts = [
            (value, min(piece, self.info.size - index * piece))
            for index, value in enumerate(self._crcs)
        ]
        got = crc32.combine_all(parts)
        if got == expected:
            return None
        return (
            f"{self.info.key}: the body's CRC-32 is {crc32.to_s3(got)}, the origin sent "
            f"{crc32.to_s3(expected)}"
        )

    def reset(self, info: ObjectInfo) -> None:
        """Start again from byte zero (the origin's object changed: 412 on resume)."""
        self.info = info
        os.ftruncate(self._fd, 0)
        self.written = 0
        self._crcs = []
        self._crc = 0
        self.crc32_expected = None  # the next open from byte zero tells the new one

    def hashed_pieces(self) -> tuple[str, ...]:
        """The hex checksums of the pieces complete so far (all once the body is in)."""
        return tuple(self.hashes_from(0))

    def hashes_from(self, index: int) -> list[str]:
        """The hex checksums of the complete pieces from ``index`` on: a caller that
        follows the fill piece by piece formats only the new ones, not the whole prefix."""
        return [_crc32_hex(crc) for crc in self._crcs[index:]]

    async def commit(self, *, pinned: bool = False, content_set: str | None = None) -> Entry:
        if self.written != self.info.size:
            raise IncompleteBodyError(
                f"{self.info.key}: got {self.written} of {self.info.size} bytes"
            )
        meta = ObjectMeta(
            info=self.info,
            piece_size=self.piece_size,
            piece_hashes=self.hashed_pieces(),
            stored_at=time.time(),
            pinned=pinned,
            content_set=content_set,
        )
        return await self.store._commit(self, meta)

    def close_fd(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def fsync(self) -> None:
        os.fsync(self._fd)

    def abort(self) -> None:
        self.close_fd()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.store._release(self)


class Store:
    def __init__(
        self,
        root: Path,
        max_bytes: int,
        piece_size: int,
        policy: PolicyName = "s3fifo",
        on_evict: Callable[[Entry, str], None] | None = None,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.piece_size = piece_size
        self._objects = root / "objects"
        self._tmp = root / "tmp"
        self._index: dict[str, Entry] = {}
        self._dynamic: Policy = make_policy(policy, max_bytes)
        self._pinned: Policy = make_policy(policy, max_bytes)
        self._reservations: dict[int, int] = {}
        self.stats = StoreStats()
        self._on_evict = on_evict
        self.ready = False
        self.version = 0  # bumped whenever the set of committed objects changes

    # --- lifecycle --------------------------------------------------------------------------

    def recover(self, deadline_seconds: float) -> list[Entry]:
        """Rebuild the index from disk (blocking; run it in a thread).

        Returns the entries that still need verification (all of them after an
        unclean shutdown). Raises :class:`StoreError` when the deadline passes.
        """
        started = time.monotonic()
        self._objects.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        clean_mark = self.root / CLEAN_MARK
        clean = clean_mark.exists()
        if clean:
            clean_mark.unlink()
            _fsync_dir(self.root)
        unverified: list[Entry] = []
        for sub in sorted(self._objects.iterdir()):
            if time.monotonic() - started > deadline_seconds:
                raise StoreError(
                    f"store recovery exceeded {deadline_seconds}s; raise "
                    "store.recoveryDeadlineSeconds or use a faster disk"
                )
            if not sub.is_dir():
                self._discard(sub)
                continue
            for path in list(sub.iterdir()):
                if path.suffix == ".meta":
                    entry = self._recover_one(path, verified=clean)
                    if entry is not None and not entry.verified:
                        unverified.append(entry)
                elif path.suffix == ".data":
                    if not path.with_suffix(".meta").exists():
                        self._discard(path)
                else:
                    self._discard(path)
        self.ready = True
        return unverified

    def _discard(self, path: Path) -> None:
        self.stats.discarded_files += 1
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def _recover_one(self, meta_path: Path, *, verified: bool) -> Entry | None:
        data_path = meta_path.with_suffix(".data")
        try:
            meta = ObjectMeta.from_json(meta_path.read_bytes())
            size = data_path.stat().st_size
        except (OSError, ValueError, KeyError, TypeError):
            self._discard(meta_path)
            self._discard(data_path)
            return None
        if size != meta.info.size or key_digest(meta.info.key) != meta_path.stem:
            self._discard(meta_path)
            self._discard(data_path)
            return None
        entry = Entry(meta=meta, data_path=data_path, verified=verified)
        self._add(entry)
        self.stats.recovered_objects += 1
        return entry

    def close(self) -> None:
        """Orderly shutdown: mark the store clean so the next start trusts it."""
        mark = self.root / CLEAN_MARK
        mark.write_bytes(b"")
        with open(mark, "rb") as fh:  # noqa: PTH123 - need the descriptor for fsync
            os.fsync(fh.fileno())
        _fsync_dir(self.root)

    # --- index ------------------------------------------------------------------------------

    def _policy(self, pinned: bool) -> Policy:
        return self._pinned if pinned else self._dynamic

    def _add(self, entry: Entry) -> None:
        old = self._index.get(entry.key)
        if old is not None:
            self._forget(old)
        self._index[entry.key] = entry
        self.version += 1
        self._policy(entry.meta.pinned).insert(entry.key, entry.size)
        self.stats.bytes += entry.size
        self.stats.objects += 1
        if entry.meta.pinned:
            self.stats.pinned_bytes += entry.size
            self.stats.pinned_objects += 1

    def _forget(self, entry: Entry) -> None:
        if self._index.get(entry.key) is not entry:
            return
        del self._index[entry.key]
        self.version += 1
        self._policy(entry.meta.pinned).remove(entry.key)
        self.stats.bytes -= entry.size
        self.stats.objects -= 1
        if entry.meta.pinned:
            self.stats.pinned_bytes -= entry.size
            self.stats.pinned_objects -= 1

    def get(self, key: str) -> Entry | None:
        """The committed entry for ``key`` (counts as an access for eviction)."""
        entry = self._index.get(key)
        if entry is not None:
            self._policy(entry.meta.pinned).hit(key)
        return entry

    def peek(self, key: str) -> Entry | None:
        return self._index.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> Iterator[str]:
        return iter(list(self._index))

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def entries(self) -> list[Entry]:
        return list(self._index.values())

    def piece_hashes(self, key: str) -> tuple[int, tuple[str, ...]] | None:
        """Piece size and hex checksum per piece (see :attr:`ObjectMeta.piece_hash`) of a
        committed object, or ``None``."""
        entry = self._index.get(key)
        if entry is None:
            return None
        return entry.meta.piece_size, entry.meta.piece_hashes

    def remove(self, key: str, *, reason: str = "invalidated") -> bool:
        entry = self._index.get(key)
        if entry is None:
            return False
        self._delete(entry)
        return True

    def _delete(self, entry: Entry) -> None:
        self._forget(entry)
        # Uncommit first (meta), then drop the data. Open readers keep their descriptor.
        entry.data_path.with_suffix(".meta").unlink(missing_ok=True)
        entry.data_path.unlink(missing_ok=True)

    # --- budget -----------------------------------------------------------------------------

    def _reserve(self, writer: Writer) -> None:
        self._reservations[id(writer)] = writer.info.size
        self.stats.reserved_bytes += writer.info.size
        self._make_room(for_pinned=writer.pinned)

    def _release(self, writer: Writer) -> None:
        size = self._reservations.pop(id(writer), None)
        if size is not None:
            self.stats.reserved_bytes -= size

    def _make_room(self, *, for_pinned: bool) -> None:
        """Evict until committed plus reserved bytes fit the budget.

        Dynamic (miss-filled) content goes first. Pinned (pre-positioned)
        content is evicted only to make room for pinned content: a dynamic miss
        never evicts it. When no dynamic object is left to give, a dynamic fill
        runs over the budget by its own reservation (bounded by the fills in
        flight) and is evicted itself once committed: it is served, not kept.
        """
        while self.stats.bytes + self.stats.reserved_bytes > self.max_bytes:
            key = self._dynamic.victim()
            cls = "dynamic"
            if key is None and for_pinned:
                key = self._pinned.victim()
                cls = "pinned"
            if key is None:
                return
            entry = self._index.get(key)
            if entry is None:
                continue
            self._delete(entry)
            self.stats.evictions[cls] += 1
            self.stats.evicted_bytes += entry.size
            if self._on_evict is not None:
                self._on_evict(entry, cls)

    # --- writing ----------------------------------------------------------------------------

    def begin(
        self, info: ObjectInfo, piece_size: int | None = None, *, pinned: bool = False
    ) -> Writer:
        """Start writing an object; reserves its size in the budget (may evict).

        ``pinned`` (a pre-positioning fill) lets the reservation evict other
        pinned content once no dynamic content is left; a miss never does.
        """
        path = self._tmp / f"{secrets.token_hex(12)}.part"
        writer = Writer(self, info, piece_size or self.piece_size, path, pinned=pinned)
        self._reserve(writer)
        return writer

    def resize(self, writer: Writer, info: ObjectInfo) -> None:
        self._release(writer)
        writer.reset(info)
        self._reserve(writer)

    async def _commit(self, writer: Writer, meta: ObjectMeta) -> Entry:
        digest = key_digest(meta.info.key)
        folder = self._objects / digest[:2]
        data_path = folder / f"{digest}.data"
        meta_path = folder / f"{digest}.meta"
        meta_tmp = self._tmp / f"{secrets.token_hex(12)}.meta"
        writer.final_path = data_path

        def durable() -> None:
            # One directory fsync, not one per rename: each is a filesystem journal
            # commit that stalls every other create and rename meanwhile (ext4), and
            # recovery after a crash copes with any subset of the renames (see above).
            folder.mkdir(exist_ok=True)
            writer.fsync()
            writer.close_fd()
            with open(meta_tmp, "wb") as fh:  # noqa: PTH123 - need the descriptor for fsync
                fh.write(meta.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            meta_path.unlink(missing_ok=True)  # replacing an older copy: uncommit it first
            writer.path.replace(data_path)
            meta_tmp.replace(meta_path)
            _fsync_dir(folder)

        old = self._index.get(meta.info.key)
        if old is not None:
            self._forget(old)
        try:
            await asyncio.to_thread(durable)
        except BaseException:
            writer.abort()
            meta_tmp.unlink(missing_ok=True)
            raise
        self._release(writer)
        entry = Entry(meta=meta, data_path=data_path, verified=True)
        self._add(entry)
        self._make_room(for_pinned=meta.pinned)
        return entry

    # --- verification -----------------------------------------------------------------------

    @staticmethod
    def _read_pieces(entry: Entry, sha256: list[str] | None = None) -> bool:
        """Whether every piece of ``entry``'s data matches its meta; with ``sha256``,
        also appends each piece's SHA-256 to it as the piece is read."""
        meta = entry.meta
        try:
            with open(entry.data_path, "rb") as fh:  # noqa: PTH123
                for expected in meta.piece_hashes:
                    piece = fh.read(meta.piece_size)
                    if piece_digest(meta.piece_hash, piece) != expected:
                        return False
                    if sha256 is not None:
                        sha256.append(hashlib.sha256(piece).hexdigest())
                return fh.read(1) == b""
        except OSError:
            return False

    def _corrupt(self, entry: Entry) -> None:
        """Drop ``entry`` after its data failed a check (unless it was replaced or
        evicted meanwhile: then its file may simply be gone, and nothing is dropped)."""
        if self._index.get(entry.key) is entry:
            self.stats.corrupt_objects += 1
            self._delete(entry)

    async def verify(self, entry: Entry) -> bool:
        """Re-check an unverified object; delete it when any piece is wrong."""
        if entry.verified:
            return True
        ok = await asyncio.to_thread(self._read_pieces, entry)
        if ok:
            entry.verified = True
            return True
        self._corrupt(entry)
        return False

    async def piece_sha256(self, entry: Entry) -> tuple[str, ...] | None:
        """The hex SHA-256 of every piece of ``entry`` (peer assist's manifests), or
        ``None`` when its data no longer matches its meta (the object is deleted, as by
        :meth:`verify`).

        A meta of version 1 carries them. Otherwise the data is read back in a thread
        (about 0.7 s per GiB) and every piece is checked against its CRC-32 on the way,
        so a digest is never made of damaged bytes; that also verifies the object.
        """
        meta = entry.meta
        if meta.piece_hash == "sha256":
            return meta.piece_hashes
        digests: list[str] = []
        ok = await asyncio.to_thread(self._read_pieces, entry, digests)
        if not ok:
            self._corrupt(entry)
            return None
        entry.verified = True
        return tuple(digests)

    async def verify_all(self, entries: list[Entry], deadline_seconds: float) -> int:
        """Background verification after an unclean shutdown; returns objects checked."""
        started = time.monotonic()
        checked = 0
        for entry in entries:
            if time.monotonic() - started > deadline_seconds:
                break
            if self._index.get(entry.key) is entry and not entry.verified:
                await self.verify(entry)
            checked += 1
        return checked

    async def set_placement(self, key: str, *, pinned: bool, content_set: str | None) -> bool:
        """Pin an object to a ContentSet, or unpin it (evictable again, not deleted).

        Pre-positioning calls this after a fill commits (whoever started the
        fill: a client miss may have fetched the key first) and when a key
        leaves the fill plan. The meta document is rewritten crash-safely
        (temp file, fsync, rename, fsync the directory) so the placement
        survives a restart; the object moves between the dynamic and pinned
        eviction classes. Returns False when the key is not in the store.
        """
        entry = self._index.get(key)
        if entry is None:
            return False
        if entry.meta.pinned == pinned and entry.meta.content_set == content_set:
            return True
        meta = replace(entry.meta, pinned=pinned, content_set=content_set)
        meta_path = entry.data_path.with_suffix(".meta")
        meta_tmp = self._tmp / f"{secrets.token_hex(12)}.meta"

        def durable() -> None:
            with open(meta_tmp, "wb") as fh:  # noqa: PTH123 - need the descriptor for fsync
                fh.write(meta.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            meta_tmp.replace(meta_path)
            _fsync_dir(meta_path.parent)

        try:
            await asyncio.to_thread(durable)
        except BaseException:
            meta_tmp.unlink(missing_ok=True)
            raise
        if self._index.get(key) is not entry:
            return key in self._index  # replaced meanwhile: the newer commit stands
        self._forget(entry)
        self._add(Entry(meta=meta, data_path=entry.data_path, verified=entry.verified))
        return True

    def by_content_set(self) -> dict[str, tuple[int, int]]:
        """Objects and bytes held per ContentSet (pinned content only)."""
        out: dict[str, tuple[int, int]] = {}
        for entry in self._index.values():
            name = entry.meta.content_set
            if name is None:
                continue
            objects, size = out.get(name, (0, 0))
            out[name] = (objects + 1, size + entry.size)
        return out
