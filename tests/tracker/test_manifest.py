from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cache_node.tracker.manifest import (
    ManifestError,
    ManifestSigner,
    PieceInfo,
    SwarmIndex,
    b64url,
    b64url_decode,
    load_signing_key,
    swarm_id,
    verify_manifest,
    verify_piece,
)

DATA = bytes(range(256)) * 200  # 51,200 bytes: 3 full 16 KiB pieces and a 2 KiB tail
PIECE = 16 * 1024


def info() -> PieceInfo:
    hashes = tuple(hashlib.sha256(DATA[i : i + PIECE]).digest() for i in range(0, len(DATA), PIECE))
    return PieceInfo(size=len(DATA), piece_size=PIECE, sha256=hashes, etag='"v1"')


def signed() -> tuple[ManifestSigner, dict[str, str]]:
    signer = ManifestSigner(Ed25519PrivateKey.generate())
    doc = signer.sign("vod/a.mp4", info(), web_seed="http://edge/vod/a.mp4", site="isp/m1")
    return signer, doc


def test_signed_manifest_verifies_and_carries_pieces() -> None:
    signer, doc = signed()
    body = verify_manifest(dict(doc), {signer.key_id: signer.public_key})
    assert body["size"] == len(DATA)
    assert body["pieceSize"] == PIECE
    assert len(body["pieces"]) == 4  # type: ignore[arg-type]
    assert body["infoHash"] == swarm_id("vod/a.mp4", '"v1"').hex()
    assert body["urlList"] == ["http://edge/vod/a.mp4"]


def test_tampered_manifest_fails() -> None:
    signer, doc = signed()
    body = json.loads(doc["manifest"])
    body["pieces"][0] = "00" * 32
    forged = dict(doc, manifest=json.dumps(body, sort_keys=True, separators=(",", ":")))
    with pytest.raises(ManifestError, match="does not verify"):
        verify_manifest(forged, {signer.key_id: signer.public_key})


def test_other_key_fails() -> None:
    _, doc = signed()
    other = ManifestSigner(Ed25519PrivateKey.generate())
    with pytest.raises(ManifestError):
        verify_manifest(dict(doc), {other.key_id: other.public_key})
    with pytest.raises(ManifestError, match="does not verify"):
        verify_manifest(dict(doc), {doc["keyId"]: other.public_key})


def test_pieces_verify_by_length_and_hash() -> None:
    signer, doc = signed()
    body = verify_manifest(dict(doc), {signer.key_id: signer.public_key})
    for i in range(4):
        verify_piece(body, i, DATA[i * PIECE : (i + 1) * PIECE])
    with pytest.raises(ManifestError, match="SHA-256"):
        verify_piece(body, 1, b"\0" * PIECE)
    with pytest.raises(ManifestError, match="bytes"):
        verify_piece(body, 3, DATA[3 * PIECE : 3 * PIECE + 100])  # truncated tail piece
    with pytest.raises(ManifestError, match="out of range"):
        verify_piece(body, 4, b"")


def test_piece_info_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="expected 4"):
        PieceInfo(size=len(DATA), piece_size=PIECE, sha256=(b"\0" * 32,), etag="x")


def test_swarm_id_changes_with_version() -> None:
    assert len(swarm_id("k", "e1")) == 20
    assert swarm_id("k", "e1") != swarm_id("k", "e2")
    assert swarm_id("k", "e1") != swarm_id("k2", "e1")


def test_key_file_formats(tmp_path: Path) -> None:
    seed = bytes(range(32))
    (tmp_path / "raw").write_bytes(seed)
    (tmp_path / "hex").write_text(seed.hex() + "\n")
    a = load_signing_key(tmp_path / "raw")
    b = load_signing_key(tmp_path / "hex")
    assert ManifestSigner(a).key_id == ManifestSigner(b).key_id
    (tmp_path / "bad").write_text("nope")
    with pytest.raises(ValueError, match="expected an Ed25519 key"):
        load_signing_key(tmp_path / "bad")


def test_jwk_matches_key() -> None:
    signer, _ = signed()
    jwk = signer.public_jwk()
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert len(b64url_decode(jwk["x"])) == 32
    assert b64url(b64url_decode(jwk["x"])) == jwk["x"]


def test_swarm_index_is_bounded_lru() -> None:
    idx = SwarmIndex(capacity=2)
    idx.add(b"a" * 20, "a")
    idx.add(b"b" * 20, "b")
    assert idx.lookup(b"a" * 20) == "a"  # a is now most recent
    idx.add(b"c" * 20, "c")
    assert idx.lookup(b"b" * 20) is None
    assert len(idx) == 2
