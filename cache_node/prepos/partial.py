"""Durable partial fills: a restarted node resumes a pre-positioning fill piece-exact.

The store's own fill files live in ``tmp/`` and are wiped on start (a fill in
progress is never trusted). For pre-positioning that would refetch every
in-flight object from zero after each crash, so each fill is also kept here,
under ``<store>/prepos/partial/``:

* ``<sha256(key)>.part`` - a second name (a hard link) of the store writer's
  temp file, so the bytes are written once, by the store, and outlive the
  wipe of ``tmp/`` after a crash;
* ``<sha256(key)>.journal`` - a JSON header line (key, size, ETag, piece
  size, validators, the piece checksum's name) followed by the checksum
  (CRC-32) of each *complete* piece, one hex digest per line, appended as each
  piece is complete. The digests are the store writer's own piece checksums
  (it computes them as it writes): nothing is hashed twice. The fill (see
  :class:`cache_node.prepos.sources.PartialTracker`) journals a piece before it
  writes a byte of the next piece, so the bound below holds.

Nothing is fsynced on the hot path: on resume every journaled piece is
checked again against the ``.part`` file and only the prefix of pieces that
match is replayed (a piece lost in the page cache at a power cut simply
fails its checksum). So after a crash at most the piece in flight is fetched
again, and the origin is asked for the rest with ``Range`` + ``If-Match``:
if the object changed (412) the partial is dropped and fetched whole. Journals
written before the CRC-32 checksums (no name in the header) hold SHA-256
digests and are checked with those.

Nothing here ever writes into a ``.part`` file: it may share its inode with
a committed object (until the fill's partial is dropped), so it is only read,
replaced by renaming a new link over it, or unlinked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from cache_node.store import PIECE_HASH, PIECE_HASHES, ObjectInfo, Writer, key_digest, piece_digest


@dataclass(frozen=True)
class Resume:
    """A verified prefix of an object held from an earlier run."""

    info: ObjectInfo
    piece_size: int
    verified_bytes: int
    data_path: Path


class Journal:
    """Journals the pieces one store writer completes (its ``.part`` is linked to it).

    The journal is opened on the first append and kept open until every piece is
    journaled or :meth:`close` is called: an open, append and close per piece (one
    per MiB by default) cost the event loop more than the append itself. After
    :meth:`close`, further appends open and close it each time, so a fill that
    goes on in another task's hands holds no descriptor. The descriptor names the
    journal's inode, not its path: a journal dropped and written anew for the
    same key is never appended to by an older one.
    """

    def __init__(self, path: Path, writer: Writer, pieces: int) -> None:
        self.path = path
        self.writer = writer
        self.info = writer.info
        self.pieces = pieces
        self._fd: int | None = None
        self._keep_open = True

    def follows(self, writer: Writer) -> bool:
        """Whether this journal still describes ``writer`` (not a new or reset one)."""
        return (
            writer is self.writer
            and writer.info is self.info
            and writer.written >= self.pieces * writer.piece_size
        )

    def sync(self) -> None:
        """Append the digests of the pieces completed since the last call."""
        hashes = self.writer.hashes_from(self.pieces)
        if not hashes:
            return
        complete = self.pieces + len(hashes)
        fd = self._fd
        if fd is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, b"".join(h.encode() + b"\n" for h in hashes))
        except BaseException:
            os.close(fd)
            self._fd = None
            raise
        self.pieces = complete
        if self._keep_open and complete * self.writer.piece_size < self.info.size:
            self._fd = fd
        else:  # every piece is journaled (nothing more to append), or closed for good
            os.close(fd)
            self._fd = None

    def close(self) -> None:
        """Give back the descriptor; later appends open the journal each time."""
        self._keep_open = False
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class Partials:
    """The partials of one store, with an index of the keys that have one.

    The index (digests of keys with a journal) is read from the folder once,
    here, and kept by :meth:`track` and :meth:`drop`, so asking for a key that
    has no partial - nearly every fill - touches no disk (:meth:`may_hold`).
    It is the only process writing this folder (one node per store).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            journals = [path.stem for path in root.iterdir() if path.suffix == ".journal"]
        except (FileNotFoundError, NotADirectoryError):
            journals = []
        self._held = set(journals)

    def may_hold(self, key: str) -> bool:
        """Whether ``key`` may have a partial (``False``: it surely has none; no disk read)."""
        return key_digest(key) in self._held

    def _paths(self, key: str) -> tuple[Path, Path]:
        digest = key_digest(key)
        return self.root / f"{digest}.part", self.root / f"{digest}.journal"

    async def track(self, writer: Writer) -> Journal:
        """Keep ``writer``'s fill as the partial of its key (replaces any older partial).

        Links the writer's temp file as the ``.part`` and writes a journal of the
        pieces complete so far, in a thread (a link, two renames, a write). The
        caller must not write to ``writer`` until this returns. Raises
        :class:`OSError` when the link cannot be made (then the fill simply has no
        partial). The key enters the index first: :meth:`may_hold` may say yes for
        a key without a partial, never the reverse, also when this is cancelled
        while the thread still works.
        """
        known = writer.hashed_pieces()
        self._held.add(key_digest(writer.info.key))
        path = await asyncio.to_thread(
            self._write, writer.path, writer.info, writer.piece_size, known
        )
        return Journal(path, writer, len(known))

    def _write(
        self, source: Path, info: ObjectInfo, piece_size: int, known: tuple[str, ...]
    ) -> Path:
        """Link ``source`` as the ``.part`` of ``info.key``, journal ``known``; the journal."""
        self.root.mkdir(parents=True, exist_ok=True)
        data, journal = self._paths(info.key)
        token = secrets.token_hex(6)
        link = data.with_name(f"{data.name}.{token}.tmp")
        os.link(source, link)
        link.replace(data)
        header = {"info": asdict(info), "pieceSize": piece_size, "pieceHash": PIECE_HASH}
        lines = [json.dumps(header, separators=(",", ":")).encode()]
        lines += [h.encode() for h in known]
        tmp = journal.with_name(f"{journal.name}.{token}.tmp")
        tmp.write_bytes(b"\n".join(lines) + b"\n")
        tmp.replace(journal)
        return journal

    def load(self, key: str) -> Resume | None:
        """The verified prefix held for ``key``, or ``None`` (a bad partial is dropped)."""
        data, journal = self._paths(key)
        try:
            lines = journal.read_bytes().splitlines()
            header = json.loads(lines[0])
            info = ObjectInfo(**header["info"])
            piece_size = int(header["pieceSize"])
            algorithm = header.get("pieceHash", "sha256")  # none before the CRC-32 journals
        except (OSError, IndexError, ValueError, KeyError, TypeError, AttributeError):
            self.drop(key)
            return None
        if info.key != key or piece_size <= 0 or algorithm not in PIECE_HASHES:
            self.drop(key)
            return None
        verified = 0
        try:
            with open(data, "rb") as fh:  # noqa: PTH123
                for line in lines[1:]:
                    piece = fh.read(min(piece_size, info.size - verified))
                    if not piece or piece_digest(algorithm, piece).encode() != line.strip():
                        break
                    verified += len(piece)
        except OSError:
            self.drop(key)
            return None
        if verified == 0:
            self.drop(key)
            return None
        return Resume(info=info, piece_size=piece_size, verified_bytes=verified, data_path=data)

    def drop(self, key: str) -> None:
        data, journal = self._paths(key)
        self._held.discard(journal.stem)
        for path in (data, journal):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def sweep_temporaries(self) -> int:
        """Remove what a crash left between two renames: temp files, and a ``.part``
        whose journal was never written (it could not be verified, so it is no partial).

        Only before any fill of this run has started (a ``.part`` is linked just
        before its journal is written).
        """
        removed = 0
        if self.root.is_dir():
            for path in self.root.glob("*.tmp"):
                path.unlink(missing_ok=True)
                removed += 1
            for path in self.root.glob("*.part"):
                if not path.with_suffix(".journal").exists():
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def held_keys(self) -> list[str]:
        """Keys with a partial on disk (read from the journal headers)."""
        out: list[str] = []
        if not self.root.is_dir():
            return out
        for journal in self.root.glob("*.journal"):
            try:
                with open(journal, "rb") as fh:  # noqa: PTH123
                    out.append(str(json.loads(fh.readline())["info"]["key"]))
            except (OSError, ValueError, KeyError, TypeError):
                self._held.discard(journal.stem)
                journal.unlink(missing_ok=True)
        return out
