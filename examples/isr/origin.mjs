#!/usr/bin/env node
// A tiny origin for the tagged `fetch` of /products and /api/products: `GET /data` answers
// `{ hits, at }` (requests served so far, and now), never cached by HTTP (`cache-control:
// no-store`, which the Next fetch cache ignores when `next.revalidate` is given).
//
//   node examples/isr/origin.mjs             # listens on 127.0.0.1:3001 (ORIGIN_PORT to change)
//   import { startOrigin } from './origin.mjs'; const o = await startOrigin(); o.url; o.hits(); await o.stop()
import http from 'node:http'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'

/** Starts the origin on `host:port` (port 0: a free one). */
export async function startOrigin({ host = '127.0.0.1', port = 0 } = {}) {
  let hits = 0
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/data') {
      hits += 1
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' })
      res.end(JSON.stringify({ hits, at: Date.now() }))
    } else {
      res.writeHead(404).end()
    }
  })
  server.listen(port, host)
  await once(server, 'listening')
  const address = server.address()
  return {
    url: `http://${host}:${address.port}`,
    /** Requests to /data served so far. */
    hits: () => hits,
    async stop() {
      server.closeAllConnections()
      server.close()
      await once(server, 'close')
    },
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const origin = await startOrigin({ port: Number(process.env.ORIGIN_PORT || 3001) })
  console.log(`origin listening on ${origin.url} (GET /data); pass ISR_ORIGIN_URL=${origin.url} to next build/start`)
}
