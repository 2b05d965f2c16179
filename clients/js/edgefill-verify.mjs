// Verify EdgeFill piece-hash manifests and pieces with WebCrypto (browsers, Node >= 20).
//
// A manifest document is {alg: "Ed25519", keyId, manifest: "<JSON text>", signature}.
// The signature covers the UTF-8 bytes of `manifest` exactly as sent, so there is no
// JSON canonicalisation here: verify the bytes, then parse them.
//
// Pieces from other peers are untrusted: check each one's length and SHA-256 against
// the verified manifest before using or re-sharing it (a truncated piece once
// poisoned p2p-media-loader swarms).

const subtle = globalThis.crypto?.subtle
const utf8 = new TextEncoder()

function b64urlToBytes (text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - text.length % 4) % 4)
  const bin = atob(b64)
  const out = new Uint8Array(bin.length)
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i)
  return out
}

export function toHex (bytes) {
  return Array.from(new Uint8Array(bytes), b => b.toString(16).padStart(2, '0')).join('')
}

export class VerificationError extends Error {}

/** Import public keys from the node's JWK set ({keys: [...]}) into {keyId: CryptoKey}. */
export async function importKeys (jwks) {
  if (!subtle) throw new VerificationError('WebCrypto is not available (needs a secure context)')
  const keys = {}
  for (const jwk of jwks.keys || []) {
    if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519') continue
    keys[jwk.kid] = await subtle.importKey(
      'jwk', { kty: 'OKP', crv: 'Ed25519', x: jwk.x }, { name: 'Ed25519' }, false, ['verify']
    )
  }
  return keys
}

/** Check a manifest document's signature; returns the parsed manifest body. */
export async function verifyManifest (doc, keys) {
  if (doc?.alg !== 'Ed25519' || typeof doc.keyId !== 'string') {
    throw new VerificationError('unsupported manifest algorithm or missing keyId')
  }
  if (typeof doc.manifest !== 'string' || typeof doc.signature !== 'string') {
    throw new VerificationError('manifest and signature must be strings')
  }
  const key = keys[doc.keyId]
  if (!key) throw new VerificationError(`unknown signing key ${doc.keyId}`)
  const ok = await subtle.verify(
    { name: 'Ed25519' }, key, b64urlToBytes(doc.signature), utf8.encode(doc.manifest)
  )
  if (!ok) throw new VerificationError('manifest signature does not verify')
  const body = JSON.parse(doc.manifest)
  if (body.hashAlgorithm !== 'sha-256' || !Array.isArray(body.pieces)) {
    throw new VerificationError('manifest lacks sha-256 piece hashes')
  }
  return body
}

/** Expected byte length of piece `index` of a manifest body. */
export function pieceLength (body, index) {
  return Math.min(body.pieceSize, body.size - index * body.pieceSize)
}

/** Throw unless `bytes` is exactly piece `index` of the manifest (length, then SHA-256). */
export async function verifyPiece (body, index, bytes) {
  if (!Number.isInteger(index) || index < 0 || index >= body.pieces.length) {
    throw new VerificationError(`piece ${index} out of range`)
  }
  const expected = pieceLength(body, index)
  if (bytes.byteLength !== expected) {
    throw new VerificationError(`piece ${index} has ${bytes.byteLength} bytes, expected ${expected}`)
  }
  const digest = toHex(await subtle.digest('SHA-256', bytes))
  if (digest !== body.pieces[index]) {
    throw new VerificationError(`piece ${index} does not match its SHA-256`)
  }
}

/** Fetch and verify a manifest from a cache node (keys from /manifest-keys unless pinned). */
export async function fetchManifest (base, key, { token, keys, fetchImpl = fetch } = {}) {
  const q = token ? `?token=${encodeURIComponent(token)}` : ''
  const path = key.split('/').map(encodeURIComponent).join('/')
  const resp = await fetchImpl(`${base}/manifest/${path}${q}`)
  if (!resp.ok) throw new VerificationError(`manifest: HTTP ${resp.status}`)
  const doc = await resp.json()
  if (!keys) {
    const jwks = await (await fetchImpl(`${base}/manifest-keys`)).json()
    keys = await importKeys(jwks)
  }
  return verifyManifest(doc, keys)
}
