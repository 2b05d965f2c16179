// Two headless Chromium pages fetch the same object through an EdgeFill tracker:
// page A downloads it (from the web seed: it is alone) and stays as a seeder; page B
// then fetches it with peer assist over WebRTC. Both verify every piece against the
// signed manifest (clients/js). Prints one JSON result line; exit 0 on success.
//
//   node browser-peers.mjs <base-url> <object-key> [chromium-path]
import { chromium } from 'playwright-core'

const [base, key, executablePath = '/usr/bin/chromium'] = process.argv.slice(2)

const browser = await chromium.launch({
  executablePath,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
    // loopback-only test network: allow 127.0.0.1 ICE candidates, no mDNS names
    '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns'
  ]
})

async function openPeer (name) {
  const context = await browser.newContext()
  const page = await context.newPage()
  page.on('console', msg => process.stderr.write(`[${name}] ${msg.text()}\n`))
  page.on('pageerror', err => process.stderr.write(`[${name}] error: ${err.message}\n`))
  await page.goto(`${base}/_test/peer.html`)
  await page.waitForFunction(() => window.ready === true)
  return page
}

async function run (page, opts) {
  return page.evaluate(async ({ base, key, peerWaitMs }) => {
    const peer = new window.PeerAssist({ base, key, peerWaitMs, log: m => console.log(m) })
    window.peer = peer
    await peer.start()
    const data = await peer.download()
    const digest = Array.from(
      new Uint8Array(await crypto.subtle.digest('SHA-256', data)),
      b => b.toString(16).padStart(2, '0')
    ).join('')
    return { stats: peer.stats, size: data.byteLength, sha256: digest, pieces: peer.manifest.pieces.length }
  }, opts)
}

let ok = false
try {
  const a = await openPeer('A')
  const b = await openPeer('B')
  const seeder = await run(a, { base, key, peerWaitMs: 0 })
  const leecher = await run(b, { base, key, peerWaitMs: 10000 })
  const seederAfter = await a.evaluate(() => window.peer.stats)
  ok = leecher.stats.fromPeers > 0 && leecher.stats.verified === leecher.pieces &&
    leecher.sha256 === seeder.sha256
  process.stdout.write(JSON.stringify({ ok, seeder, leecher, seederAfter }) + '\n')
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack || err) }) + '\n')
} finally {
  await browser.close()
}
process.exit(ok ? 0 : 1)
