"""Durable partial fills: a restarted node resumes a pre-positioning fill piece-exact.

The store's own fill files live in ``tmp/`` and are wiped on start (a fill in
progress is never trusted). For pre-positioning that would refetch every
in-flight object from zero after each crash, so the fill stream is also
recorded here, under ``<store>/prepos/partial/``:

* ``<sha256(key)>.part`` - the bytes received so far, at their offsets;
* ``<sha256(key)>.journal`` - a JSON header line (key, size, ETag, piece
  size, validators) followed by the SHA-256 of each *complete* piece, one
  hex digest per line, appended as each piece completes.

Nothing is fsynced on the hot path: on resume every journaled piece is
re-hashed against the ``.part`` file and only the prefix of pieces that
match is replayed (a piece lost in the page cache at a power cut simply
fails its hash). So after a crash at most the piece in flight is fetched
again, and the origin is asked for the rest with ``Range`` + ``If-Match``:
if the object changed (412) the partial is dropped and fetched whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cache_node.store import ObjectInfo, key_digest


@dataclass(frozen=True)
class Resume:
    """A verified prefix of an object held from an earlier run."""

    info: ObjectInfo
    piece_size: int
    verified_bytes: int
    data_path: Path


class Recorder:
    """Tees one fill's bytes to its ``.part`` file and journals finished pieces."""

    def __init__(
        self, data_path: Path, journal_path: Path, piece_size: int, start: int, fresh: bool
    ) -> None:
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        self._fd = os.open(data_path, flags, 0o640)
        self._journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND)
        self.piece_size = piece_size
        self.written = start
        self._hash = hashlib.sha256()
        self._fill = 0
        self.closed = False

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        os.pwrite(self._fd, view, self.written)
        self.written += len(view)
        lines: list[bytes] = []
        while view:
            take = min(len(view), self.piece_size - self._fill)
            self._hash.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == self.piece_size:
                lines.append(self._hash.hexdigest().encode() + b"\n")
                self._hash = hashlib.sha256()
                self._fill = 0
        if lines:
            os.write(self._journal, b"".join(lines))

    def finish(self, size: int) -> None:
        """The body ended: journal the short last piece."""
        if self._fill and self.written == size:
            os.write(self._journal, self._hash.hexdigest().encode() + b"\n")
            self._fill = 0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)
            os.close(self._journal)


class Partials:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _paths(self, key: str) -> tuple[Path, Path]:
        digest = key_digest(key)
        return self.root / f"{digest}.part", self.root / f"{digest}.journal"

    def begin(self, info: ObjectInfo, piece_size: int) -> Recorder:
        """Start recording ``info``'s body from byte zero (replaces any older partial)."""
        self.root.mkdir(parents=True, exist_ok=True)
        data, journal = self._paths(info.key)
        header = {"info": asdict(info), "pieceSize": piece_size}
        tmp = journal.with_suffix(".journal.tmp")
        tmp.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        tmp.replace(journal)
        return Recorder(data, journal, piece_size, 0, fresh=True)

    def resume(self, resume: Resume) -> Recorder:
        """Continue recording after the verified prefix (the journal is rewritten to match)."""
        data, journal = self._paths(resume.info.key)
        hashes = self._hashes(data, resume.piece_size, resume.verified_bytes)
        header = {"info": asdict(resume.info), "pieceSize": resume.piece_size}
        tmp = journal.with_suffix(".journal.tmp")
        body = json.dumps(header, separators=(",", ":")) + "\n" + "".join(h + "\n" for h in hashes)
        tmp.write_bytes(body.encode())
        tmp.replace(journal)
        return Recorder(data, journal, resume.piece_size, resume.verified_bytes, fresh=False)

    @staticmethod
    def _hashes(data: Path, piece_size: int, upto: int) -> list[str]:
        out: list[str] = []
        with open(data, "rb") as fh:  # noqa: PTH123
            while fh.tell() < upto:
                out.append(hashlib.sha256(fh.read(min(piece_size, upto - fh.tell()))).hexdigest())
        return out

    def load(self, key: str) -> Resume | None:
        """The verified prefix held for ``key``, or ``None`` (a bad partial is dropped)."""
        data, journal = self._paths(key)
        try:
            lines = journal.read_bytes().splitlines()
            header = json.loads(lines[0])
            info = ObjectInfo(**header["info"])
            piece_size = int(header["pieceSize"])
        except (OSError, IndexError, ValueError, KeyError, TypeError):
            self.drop(key)
            return None
        if info.key != key or piece_size <= 0:
            self.drop(key)
            return None
        verified = 0
        try:
            with open(data, "rb") as fh:  # noqa: PTH123
                for line in lines[1:]:
                    piece = fh.read(min(piece_size, info.size - verified))
                    if not piece or hashlib.sha256(piece).hexdigest().encode() != line.strip():
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
        for path in self._paths(key):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def keys(self) -> list[str]:
        """Keys with a partial on disk (read from the journal headers)."""
        out: list[str] = []
        if not self.root.is_dir():
            return out
        for journal in self.root.glob("*.journal"):
            try:
                with open(journal, "rb") as fh:  # noqa: PTH123
                    out.append(str(json.loads(fh.readline())["info"]["key"]))
            except (OSError, ValueError, KeyError, TypeError):
                journal.unlink(missing_ok=True)
        return out
