// Two headless Chromium pages run the unmodified p2p-media-loader core (npm
// p2p-media-loader-core, the engine behind its hls.js / Shaka integrations) against an
// EdgeFill tracker. The object's pieces are the stream's segments (byte ranges of the
// web seed URL); every segment, from HTTP or P2P, is checked against the signed
// manifest in validateP2PSegment / validateHTTPSegment. Page A loads them all over HTTP
// and stays; page B plays from 0 and prefetches ahead, from A over WebRTC.
//
//   node pml-peers.mjs <base-url> <object-key> [chromium-path]
import { chromium } from 'playwright-core'

const [base, key, executablePath = '/usr/bin/chromium'] = process.argv.slice(2)
const browser = await chromium.launch({
  executablePath,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
    '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns'
  ]
})

async function open (name) {
  const page = await (await browser.newContext()).newPage()
  page.on('console', msg => process.stderr.write(`[${name}] ${msg.text()}\n`))
  page.on('pageerror', err => process.stderr.write(`[${name}] error: ${err.message}\n`))
  await page.goto(`${base}/_test/peer.html`)
  await page.waitForFunction(() => window.ready === true)
  return page
}

async function play (page, role) {
  return page.evaluate(async ({ base, key, role }) => {
    const { Core } = await import('/_test/pml/p2p-media-loader-core.es.js')
    const { fetchManifest, verifyPiece } = await import('/clients/edgefill-verify.mjs')
    const manifest = await fetchManifest(base, key)
    const stats = { http: 0, p2p: 0, verified: 0, rejected: 0 }
    const check = async (url, byteRange, data) => {
      try {
        await verifyPiece(manifest, byteRange.start / manifest.pieceSize, new Uint8Array(data))
        stats.verified++
        return true
      } catch (err) {
        stats.rejected++
        console.log(`rejected: ${err.message}`)
        return false
      }
    }
    const core = new Core({
      announceTrackers: [manifest.announce],
      swarmId: `edgefill:${key}`,
      rtcConfig: { iceServers: [] },
      validateP2PSegment: check,
      validateHTTPSegment: check,
      highDemandTimeWindow: 2,
      httpDownloadTimeWindow: role === 'seeder' ? 3600 : 0,
      p2pDownloadTimeWindow: 3600
    })
    core.addEventListener('onChunkDownloaded', (bytes, source) => { stats[source] += bytes })
    core.setManifestResponseUrl(`${base}/objects/${key}.m3u8`)
    core.addStreamIfNoneExists({ runtimeId: 'main', type: 'main', index: '0' })
    const segments = manifest.pieces.map((_, i) => {
      const start = i * manifest.pieceSize
      const end = Math.min(start + manifest.pieceSize, manifest.size) - 1
      return {
        runtimeId: `seg-${i}`, externalId: i, url: manifest.urlList[0],
        byteRange: { start, end }, startTime: i * 2, endTime: i * 2 + 2
      }
    })
    core.updateStream('main', segments, [])
    core.updatePlayback(0, 1)
    const load = id => new Promise((resolve, reject) => {
      core.loadSegment(id, { onSuccess: resolve, onError: reject }).catch(reject)
    })
    window.core = core
    window.stats = stats
    if (role === 'seeder') {
      for (const s of segments) { core.updatePlayback(s.startTime, 1); await load(s.runtimeId) }
      return stats
    }
    await load('seg-0') // high demand: from HTTP
    const deadline = Date.now() + 30000
    while (stats.p2p === 0 && Date.now() < deadline) await new Promise(r => setTimeout(r, 200))
    for (const s of segments.slice(1)) { // like a player: prefetched ones come from storage
      core.updatePlayback(s.startTime, 1)
      await load(s.runtimeId)
    }
    return { ...stats, segments: segments.length }
  }, { base, key, role })
}

let ok = false
try {
  const a = await open('A')
  const b = await open('B')
  const seeder = await play(a, 'seeder')
  const viewer = await play(b, 'viewer')
  ok = viewer.p2p > 0 && viewer.rejected === 0 && seeder.rejected === 0
  process.stdout.write(JSON.stringify({ ok, seeder, viewer }) + '\n')
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack || err) }) + '\n')
} finally {
  await browser.close()
}
process.exit(ok ? 0 : 1)
