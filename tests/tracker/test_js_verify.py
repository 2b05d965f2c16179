"""The JavaScript verifier (clients/js/edgefill-verify.mjs) under Node's WebCrypto:
it accepts a manifest signed by the node and its pieces, and rejects forgeries."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cache_node.tracker.manifest import ManifestSigner, PieceInfo

from .conftest import PIECE, object_bytes

pytestmark = pytest.mark.integration

VERIFY = (Path(__file__).resolve().parents[2] / "clients" / "js" / "edgefill-verify.mjs").as_uri()

SCRIPT = """
import { importKeys, verifyManifest, verifyPiece } from '%s'
const input = JSON.parse(process.argv[1])
const keys = await importKeys(input.jwks)
const out = {}
const body = await verifyManifest(input.doc, keys)
out.pieces = body.pieces.length
const bytes = Uint8Array.from(Buffer.from(input.piece0, 'base64'))
await verifyPiece(body, 0, bytes)
out.piece0 = 'ok'
for (const [name, fn] of Object.entries({
  corrupt: () => { const b = bytes.slice(); b[5] ^= 1; return verifyPiece(body, 0, b) },
  truncated: () => verifyPiece(body, 0, bytes.subarray(0, 100)),
  forged: () => verifyManifest(
    { ...input.doc, manifest: input.doc.manifest.replace('"size":', '"size": ') }, keys),
})) {
  try { await fn(); out[name] = 'accepted' } catch (e) { out[name] = e.message }
}
console.log(JSON.stringify(out))
"""


def test_js_verifier_agrees_with_the_signer() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("needs node >= 20")
    data = object_bytes("k", 3 * PIECE)
    info = PieceInfo(
        size=len(data),
        piece_size=PIECE,
        sha256=tuple(
            hashlib.sha256(data[i : i + PIECE]).digest() for i in range(0, len(data), PIECE)
        ),
        etag='"e"',
    )
    signer = ManifestSigner(Ed25519PrivateKey.generate())
    payload = {
        "doc": signer.sign("k", info, web_seed="http://edge/k", site="s/n"),
        "jwks": {"keys": [signer.public_jwk()]},
        "piece0": base64.b64encode(data[:PIECE]).decode(),
    }
    proc = subprocess.run(
        [node, "--input-type=module", "-e", SCRIPT % VERIFY, json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pieces"] == 3
    assert out["piece0"] == "ok"
    assert "SHA-256" in out["corrupt"]
    assert "bytes" in out["truncated"]
    assert "does not verify" in out["forged"]
