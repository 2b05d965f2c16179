"""Signed piece-hash manifests and the swarm id of an object.

Pieces arrive from other end users, so a client must be able to check every
piece against hashes it got from someone it trusts. The manifest lists the
SHA-256 of each piece (the store's own pieces), the object's size, piece size
and ETag, the swarm's info-hash, the web seed URL (BEP 19 ``urlList``) and the
trackers to announce to (``announce`` and BEP 12 ``announceList`` tiers: the
swarm's owner first, then the next member by the same rendezvous ranking).

Why Ed25519 and not HMAC: with HMAC, whoever can verify can also forge, so the
verification key would have to be a secret shared with every player. With
Ed25519 clients hold only the public key (pinned in the app or fetched once
over TLS from ``/manifest-keys``); a manifest relayed by a peer, a proxy or a
service worker cache still proves it came from the site. Verification is in
WebCrypto (browsers, Node) and in ``cryptography`` (Python).

Wire form (JSON)::

    {"alg": "Ed25519", "keyId": "<16 hex>", "manifest": "<canonical JSON text>",
     "signature": "<base64url, no padding>"}

The signature covers the UTF-8 bytes of the ``manifest`` string exactly as
sent, so clients need no JSON canonicalisation: verify the bytes, then parse.

The swarm id (info-hash) is SHA-1 over ``edgefill-swarm/v1``, the key and the
ETag: 20 bytes like any BitTorrent info-hash, so unmodified clients can join it
(as a magnet-style hash), and a new version of an object gets a new swarm, so
peers never mix pieces of two versions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST_VERSION = 1
ALGORITHM = "Ed25519"


@dataclass(frozen=True, slots=True)
class PieceInfo:
    """What the store knows about a complete, verified object."""

    size: int
    piece_size: int
    sha256: tuple[bytes, ...]
    etag: str

    def __post_init__(self) -> None:
        if self.size < 0 or self.piece_size <= 0:
            raise ValueError("size must be >= 0 and piece_size > 0")
        expected = -(-self.size // self.piece_size)
        if len(self.sha256) != expected:
            raise ValueError(
                f"{len(self.sha256)} piece hashes for {self.size} bytes in pieces of "
                f"{self.piece_size}: expected {expected}"
            )
        if any(len(h) != 32 for h in self.sha256):
            raise ValueError("every piece hash must be 32 bytes (SHA-256)")


class PieceHashSource(Protocol):
    """The store side: piece hashes of an object this site serves, or None."""

    async def piece_info(self, key: str) -> PieceInfo | None: ...


def swarm_id(key: str, etag: str) -> bytes:
    """The 20-byte info-hash of the swarm for this version of object ``key``."""
    return hashlib.sha1(  # noqa: S324 - the BitTorrent info-hash width, not a security hash
        b"edgefill-swarm/v1\0" + key.encode("utf-8") + b"\0" + etag.encode("utf-8")
    ).digest()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the mounted key: PKCS#8 PEM, or a raw 32-byte seed (binary or 64 hex chars)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: the PEM key is not an Ed25519 private key")
        return key
    text = data.strip()
    if len(text) == 64:
        try:
            return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            pass
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    raise ValueError(
        f"{path}: expected an Ed25519 key as PKCS#8 PEM, 32 raw bytes or 64 hex characters"
    )


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """Short stable id of a public key, so clients can hold two during rotation."""
    return hashlib.sha256(raw_public_key(public)).hexdigest()[:16]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ManifestSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def public_jwk(self) -> dict[str, str]:
        """The public key as an RFC 8037 JWK (what WebCrypto ``importKey('jwk')`` takes)."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(raw_public_key(self.public_key)),
            "kid": self.key_id,
            "use": "sig",
            "alg": "EdDSA",
        }

    def sign(
        self,
        key: str,
        info: PieceInfo,
        *,
        web_seed: str,
        site: str,
        announce: list[list[str]] | None = None,
        issued_at: int | None = None,
    ) -> dict[str, str]:
        tiers = announce or []
        body = {
            "version": MANIFEST_VERSION,
            "site": site,
            "key": key,
            "etag": info.etag,
            "size": info.size,
            "pieceSize": info.piece_size,
            "hashAlgorithm": "sha-256",
            "pieces": [h.hex() for h in info.sha256],
            "infoHash": swarm_id(key, info.etag).hex(),
            "urlList": [web_seed],
            "announce": tiers[0][0] if tiers else None,
            "announceList": tiers,
            "issuedAt": int(time.time()) if issued_at is None else issued_at,
        }
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        signature = self._key.sign(text.encode("utf-8"))
        return {
            "alg": ALGORITHM,
            "keyId": self.key_id,
            "manifest": text,
            "signature": b64url(signature),
        }


class ManifestError(ValueError):
    """A manifest or piece failed verification."""


def verify_manifest(
    document: dict[str, object], public_keys: dict[str, Ed25519PublicKey]
) -> dict[str, object]:
    """Check a manifest document's signature; returns the parsed manifest body."""
    from cryptography.exceptions import InvalidSignature

    kid = document.get("keyId")
    text = document.get("manifest")
    sig = document.get("signature")
    if document.get("alg") != ALGORITHM or not isinstance(kid, str):
        raise ManifestError("unsupported algorithm or missing keyId")
    if not isinstance(text, str) or not isinstance(sig, str):
        raise ManifestError("manifest and signature must be strings")
    public = public_keys.get(kid)
    if public is None:
        raise ManifestError(f"unknown signing key {kid!r}")
    try:
        public.verify(b64url_decode(sig), text.encode("utf-8"))
    except (InvalidSignature, ValueError):
        raise ManifestError("manifest signature does not verify") from None
    body = json.loads(text)
    if not isinstance(body, dict):
        raise ManifestError("manifest body is not an object")
    return body


def verify_piece(body: dict[str, object], index: int, data: bytes) -> None:
    """Check one piece from a peer against a verified manifest body (length and hash)."""
    size, piece_size, pieces = body.get("size"), body.get("pieceSize"), body.get("pieces")
    if not isinstance(size, int) or not isinstance(piece_size, int) or not isinstance(pieces, list):
        raise ManifestError("manifest lacks size, pieceSize or pieces")
    if not 0 <= index < len(pieces):
        raise ManifestError(f"piece {index} out of range (0..{len(pieces) - 1})")
    expected_len = min(piece_size, size - index * piece_size)
    if len(data) != expected_len:
        raise ManifestError(f"piece {index} has {len(data)} bytes, expected {expected_len}")
    if hashlib.sha256(data).hexdigest() != pieces[index]:
        raise ManifestError(f"piece {index} does not match its SHA-256")


class SwarmIndex:
    """info-hash -> object key for objects this site serves (bounded LRU).

    An info-hash cannot be inverted, so a swarm becomes known when a client
    fetches the object's manifest (the supported way to learn the info-hash).
    Announces for hashes not in the index are rejected: no swarms for objects
    the site does not serve, however many random hashes arrive.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # OrderedDict, not a plain dict: evicting from the front of a plain dict
        # leaves dummies that every later eviction scans over again.
        self._map: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._map)

    def add(self, info_hash: bytes, key: str) -> None:
        self._map[info_hash] = key
        self._map.move_to_end(info_hash)
        while len(self._map) > self.capacity:
            self._map.popitem(last=False)

    def lookup(self, info_hash: bytes) -> str | None:
        key = self._map.get(info_hash)
        if key is not None:
            self._map.move_to_end(info_hash)
        return key

    def discard(self, info_hash: bytes) -> None:
        self._map.pop(info_hash, None)
