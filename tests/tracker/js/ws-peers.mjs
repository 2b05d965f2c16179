// Unmodified npm `bittorrent-tracker` clients announcing over WebSocket to a tracker.
//
//   node --import ./register.mjs ws-peers.mjs <announce-url>[,<announce-url>...] <info-hash-hex> [clients] [deadline-s]
//
// With several comma-separated URLs, client i announces to URL i mod n only (clients
// of one swarm reaching different members of a site).
// Each client announces (with WebRTC offers); the tracker relays offers and answers;
// once two clients hold a live data channel they exchange a greeting. Prints one
// JSON line per event and a final {"result": ...}; exits 0 when every client found
// a peer and received data over WebRTC, 1 otherwise (deadline 40 s by default).
import Client from 'bittorrent-tracker'
import { randomBytes } from 'node:crypto'

const [announceArg, infoHash, countArg, deadlineArg] = process.argv.slice(2)
const announces = announceArg.split(',')
const count = Number(countArg || 2)
const state = Array.from({ length: count }, () => ({ peers: 0, received: [] }))
const clients = []

function log (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

function finish (ok) {
  log({ result: ok ? 'ok' : 'timeout', state })
  for (const c of clients) c.destroy()
  setTimeout(() => process.exit(ok ? 0 : 1), 200)
}

function check () {
  if (state.every(s => s.peers > 0 && s.received.length > 0)) finish(true)
}

for (let i = 0; i < count; i++) {
  const client = new Client({
    infoHash,
    peerId: randomBytes(20),
    announce: [announces[i % announces.length]],
    port: 6881,
    getAnnounceOpts: () => ({ uploaded: 0, downloaded: 0, left: 1000 })
  })
  clients.push(client)
  client.on('error', err => log({ client: i, error: err.message }))
  client.on('warning', err => log({ client: i, warning: err.message }))
  client.on('update', data => log({ client: i, update: { complete: data.complete, incomplete: data.incomplete } }))
  client.on('peer', peer => {
    state[i].peers++
    log({ client: i, peer: true })
    peer.on('data', buf => {
      const text = new TextDecoder().decode(buf)
      state[i].received.push(text)
      log({ client: i, data: text })
      check()
    })
    peer.on('error', err => log({ client: i, peerError: err.message }))
    // The client hands over peers before their data channel opens.
    const greet = () => peer.send(`hello from client ${i}`)
    if (peer.connected) greet()
    else peer.once('connect', () => { log({ client: i, connected: true }); greet() })
  })
  // Stagger the starts so the later client's offers meet an announced peer.
  setTimeout(() => client.start(), i * 500)
}

setTimeout(() => finish(false), 1000 * Number(deadlineArg || 40))
