// webtorrent's `bittorrent-tracker` server (npm), HTTP only, for the announce benchmark.
//   node bench/tracker/serve_bt.mjs PORT
// Its node_modules live in tests/tracker/js (npm ci --ignore-scripts there).
const { default: Server } = await import(
  new URL('../../tests/tracker/js/node_modules/bittorrent-tracker/server.js', import.meta.url)
)

const port = Number(process.argv[2])
const server = new Server({ udp: false, http: true, ws: false, stats: false })
server.on('error', err => { console.error(err.message); process.exit(1) })
server.on('warning', () => {})
server.listen(port, '127.0.0.1', () => console.log('listening'))
