// A small reference peer-assist client for browsers: fetch one object from an EdgeFill
// site with pieces from other end users, verifying every piece against the signed
// manifest, with the cache node (the manifest's web seed) as the fallback for any
// piece no peer delivers correctly.
//
// Signalling is the WebTorrent WebSocket tracker protocol (binary ids as 20-character
// strings, offers relayed by the tracker, answers relayed back). Between peers, one
// reliable ordered data channel carries:
//   text   {"t":"have","pieces":[i,...]}   pieces the sender can serve
//   text   {"t":"req","i":i}               please send piece i
//   binary [u32 index][u32 offset][bytes]   a chunk of piece i (<= 16 KiB per message)
// A peer that sends a piece failing its length or SHA-256 check is dropped.

import { fetchManifest, pieceLength, verifyPiece } from './edgefill-verify.mjs'

const CHUNK = 16 * 1024
const OFFERS = 5

function randomId () {
  const bytes = crypto.getRandomValues(new Uint8Array(20))
  return String.fromCharCode(...bytes)
}

function hexToBinary (hex) {
  let out = ''
  for (let i = 0; i < hex.length; i += 2) out += String.fromCharCode(parseInt(hex.slice(i, i + 2), 16))
  return out
}

function iceDone (pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve()
  return new Promise(resolve => {
    const check = () => { if (pc.iceGatheringState === 'complete') resolve() }
    pc.addEventListener('icegatheringstatechange', check)
    setTimeout(resolve, 5000) // send what we have; loopback gathers in milliseconds
  })
}

export class PeerAssist {
  constructor ({ base, key, token, keys, iceServers = [], peerWaitMs = 3000, log = () => {} }) {
    Object.assign(this, { base, key, token, keys, iceServers, peerWaitMs, log })
    this.peerId = randomId()
    this.pieces = []
    this.have = new Set()
    this.channels = new Set()
    this.pending = new Map() // offer_id -> RTCPeerConnection
    this.stats = { fromPeers: 0, fromHttp: 0, uploaded: 0, verified: 0, rejected: 0, peers: 0 }
    this.waiters = []
  }

  async start () {
    this.manifest = await fetchManifest(this.base, this.key, { token: this.token, keys: this.keys })
    this.infoHash = hexToBinary(this.manifest.infoHash)
    // The manifest names the swarm's owner node first; fall back to the node we asked.
    const announce = new URL(
      this.manifest.announce || `${this.base.replace(/^http/, 'ws')}/announce?object=${encodeURIComponent(this.key)}`
    )
    if (this.token) announce.searchParams.set('token', this.token)
    this.ws = new WebSocket(announce.href)
    await new Promise((resolve, reject) => {
      this.ws.onopen = resolve
      this.ws.onerror = () => reject(new Error('tracker socket failed'))
    })
    this.ws.onmessage = ev => this._onTracker(JSON.parse(ev.data))
    await this._announce('started')
  }

  get left () {
    let left = 0
    for (let i = 0; i < this.manifest.pieces.length; i++) {
      if (!this.have.has(i)) left += pieceLength(this.manifest, i)
    }
    return left
  }

  async _announce (event) {
    const offers = []
    if (event !== 'completed' && event !== 'stopped') {
      for (let n = 0; n < OFFERS; n++) {
        const pc = this._pc()
        const channel = pc.createDataChannel('edgefill')
        this._wire(channel)
        await pc.setLocalDescription(await pc.createOffer())
        await iceDone(pc)
        const offerId = randomId()
        this.pending.set(offerId, pc)
        offers.push({ offer: { type: 'offer', sdp: pc.localDescription.sdp }, offer_id: offerId })
      }
    }
    this.ws.send(JSON.stringify({
      action: 'announce',
      info_hash: this.infoHash,
      peer_id: this.peerId,
      event,
      numwant: offers.length,
      uploaded: this.stats.uploaded,
      downloaded: this.stats.fromPeers + this.stats.fromHttp,
      left: this.left,
      offers
    }))
  }

  _pc () {
    return new RTCPeerConnection({ iceServers: this.iceServers })
  }

  async _onTracker (msg) {
    if (msg['failure reason']) { this.log(`tracker: ${msg['failure reason']}`); return }
    if (msg.info_hash !== this.infoHash || msg.peer_id === this.peerId) return
    if (msg.offer) {
      const pc = this._pc()
      pc.ondatachannel = ev => this._wire(ev.channel)
      await pc.setRemoteDescription(msg.offer)
      await pc.setLocalDescription(await pc.createAnswer())
      await iceDone(pc)
      this.ws.send(JSON.stringify({
        action: 'announce',
        info_hash: this.infoHash,
        peer_id: this.peerId,
        to_peer_id: msg.peer_id,
        offer_id: msg.offer_id,
        answer: { type: 'answer', sdp: pc.localDescription.sdp }
      }))
    } else if (msg.answer) {
      const pc = this.pending.get(msg.offer_id)
      if (!pc) return
      this.pending.delete(msg.offer_id)
      await pc.setRemoteDescription(msg.answer)
    }
  }

  _wire (channel) {
    channel.binaryType = 'arraybuffer'
    channel.remoteHave = new Set()
    channel.partial = new Map()
    const opened = () => {
      this.channels.add(channel)
      this.stats.peers++
      channel.send(JSON.stringify({ t: 'have', pieces: [...this.have] }))
      this._wake()
    }
    // An answerer's channel may already be open when ondatachannel fires.
    if (channel.readyState === 'open') opened()
    else channel.onopen = opened
    channel.onclose = () => this.channels.delete(channel)
    channel.onmessage = ev => this._onPeer(channel, ev.data)
  }

  _onPeer (channel, data) {
    if (typeof data === 'string') {
      const msg = JSON.parse(data)
      if (msg.t === 'have') {
        for (const i of msg.pieces) channel.remoteHave.add(i)
        this._wake()
      } else if (msg.t === 'req' && this.have.has(msg.i)) {
        this._sendPiece(channel, msg.i)
      }
      return
    }
    const view = new DataView(data)
    const index = view.getUint32(0)
    const offset = view.getUint32(4)
    const slot = channel.partial.get(index)
    if (!slot || offset + data.byteLength - 8 > slot.buf.byteLength) return
    slot.buf.set(new Uint8Array(data, 8), offset)
    slot.got += data.byteLength - 8
    if (slot.got >= slot.buf.byteLength) {
      channel.partial.delete(index)
      slot.resolve(slot.buf)
    }
  }

  _sendPiece (channel, index) {
    const piece = this.pieces[index]
    for (let off = 0; off < piece.byteLength; off += CHUNK) {
      const part = piece.subarray(off, off + CHUNK)
      const msg = new Uint8Array(8 + part.byteLength)
      new DataView(msg.buffer).setUint32(0, index)
      new DataView(msg.buffer).setUint32(4, off)
      msg.set(part, 8)
      channel.send(msg)
    }
    this.stats.uploaded += piece.byteLength
  }

  _wake () {
    for (const w of this.waiters.splice(0)) w()
  }

  _peerFor (index) {
    for (const ch of this.channels) if (ch.readyState === 'open' && ch.remoteHave.has(index)) return ch
    return null
  }

  async _fromPeer (channel, index) {
    const len = pieceLength(this.manifest, index)
    const got = new Promise((resolve, reject) => {
      channel.partial.set(index, { buf: new Uint8Array(len), got: 0, resolve })
      setTimeout(() => reject(new Error('peer timeout')), 10000)
    })
    channel.send(JSON.stringify({ t: 'req', i: index }))
    return got
  }

  async _fromHttp (index) {
    const start = index * this.manifest.pieceSize
    const end = start + pieceLength(this.manifest, index) - 1
    const url = this.manifest.urlList[0] + (this.token ? `?token=${encodeURIComponent(this.token)}` : '')
    const resp = await fetch(url, { headers: { Range: `bytes=${start}-${end}` } })
    if (resp.status !== 206 && resp.status !== 200) throw new Error(`web seed HTTP ${resp.status}`)
    let bytes = new Uint8Array(await resp.arrayBuffer())
    if (resp.status === 200) bytes = bytes.subarray(start, end + 1)
    return bytes
  }

  async _waitForPeer (index, ms) {
    const deadline = Date.now() + ms
    while (!this._peerFor(index) && Date.now() < deadline) {
      await new Promise(resolve => {
        this.waiters.push(resolve)
        setTimeout(resolve, Math.max(0, deadline - Date.now()))
      })
    }
    return this._peerFor(index)
  }

  /** Fetch every piece (peers first, web seed as fallback); resolves to the object bytes. */
  async download () {
    const count = this.manifest.pieces.length
    for (let i = 0; i < count; i++) {
      let piece = null
      const channel = await this._waitForPeer(i, this.peerWaitMs)
      if (channel) {
        try {
          const bytes = await this._fromPeer(channel, i)
          await verifyPiece(this.manifest, i, bytes)
          piece = bytes
          this.stats.fromPeers += bytes.byteLength
        } catch (err) {
          this.stats.rejected++
          this.log(`piece ${i} from peer rejected: ${err.message}`)
          this.channels.delete(channel)
          channel.close()
        }
      }
      if (!piece) {
        piece = await this._fromHttp(i)
        await verifyPiece(this.manifest, i, piece)
        this.stats.fromHttp += piece.byteLength
      }
      this.stats.verified++
      this.pieces[i] = piece
      this.have.add(i)
      for (const ch of this.channels) {
        if (ch.readyState === 'open') ch.send(JSON.stringify({ t: 'have', pieces: [i] }))
      }
    }
    await this._announce('completed')
    const out = new Uint8Array(this.manifest.size)
    this.pieces.forEach((p, i) => out.set(p, i * this.manifest.pieceSize))
    return out
  }

  close () {
    for (const ch of this.channels) ch.close()
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.close()
  }
}
