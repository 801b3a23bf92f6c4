// A loopback TCP proxy in front of a real redis-server that can be told to misbehave, the way a
// broken or hostile Redis (or a proxy in front of one) would:
//
//   const redis = await startRedis()
//   const proxy = await startFaultProxy(redis)  // { port, url, setMode, close, connections, counters }
//   … point a client at proxy.url …
//   proxy.setMode('silent')                     // every connection, existing and new
//   proxy.setMode('pass')                       // behaves again
//   await proxy.close()
//
// Requests (client → server) are always forwarded unchanged, so the server keeps executing them;
// the modes only change the *replies* (server → client):
//
//   'pass'            forwards byte for byte (handshake, Lua scripts, TIME … just work);
//   'silent'          swallows every reply and keeps the socket open;
//   'flood'           answers the next request of each connection with the header of a 500 MB
//                     bulk (`$524288000\r\n`), then streams filler as fast as the client takes it
//                     (backpressure respected), until the client closes, the mode changes, or
//                     `opts.maxBytes` (default: the whole 500 MB) were sent;
//   'garbage'         replaces each reply with as many random bytes;
//   'empty-line'      answers each request with `\r\n`;
//   'wrong-type'      answers each request with a reply of an unknown or unexpected type
//                     (`opts.replies` to choose them; rotated through);
//   'negative-len'    `$-5\r\n`;
//   'huge-len'        `$99999999999\r\n`;
//   'mismatched-len'  `$10\r\nabc\r\n` then more bytes that are not the `\r\n` the length promised;
//   'deep-nesting'    `*1\r\n` × 1000 then `:1\r\n`;
//   'byte-by-byte'    forwards the real replies one byte per write, with a setImmediate between;
//   'truncate-close'  forwards the first half of the next reply, then destroys the client socket
//                     (new connections meet the same fate on their first reply);
//   'unsolicited'     pushes an extra reply (`+OK\r\n` or a bulk) before each real one, and every
//                     `opts.intervalMs` (20) sends one when nothing was asked.
//
// Replies swallowed or replaced while misbehaving are gone for good when the mode goes back to
// 'pass': a client has to drop a connection it can no longer trust.
import { randomBytes } from 'node:crypto'
import net from 'node:net'

export const MODES = [
  'pass', 'silent', 'flood', 'garbage', 'empty-line', 'wrong-type', 'negative-len', 'huge-len',
  'mismatched-len', 'deep-nesting', 'byte-by-byte', 'truncate-close', 'unsolicited',
]

const FLOOD_LEN = 524_288_000 // 500 MB, the length the flood's bulk header announces
const FLOOD_CHUNK = Buffer.alloc(64 * 1024, 'x')

// The fixed answer of each mode that replaces a reply by a constant; sent once per request chunk.
const CANNED = {
  'empty-line': ['\r\n'],
  // `?` and `x` are no RESP type at all; `!` is a RESP3 blob error, unknown to a RESP2 reader;
  // `:` and `*` are valid RESP but not what a GET or SET answers.
  'wrong-type': ['?foo\r\n', '!3\r\nabc\r\n', 'x\r\n', ':1\r\n', '*2\r\n$1\r\na\r\n$1\r\nb\r\n'],
  'negative-len': ['$-5\r\n'],
  'huge-len': ['$99999999999\r\n'],
  // 10 bytes of payload ("abc\r\n+OK\r\n"), then ":1" where the bulk's closing "\r\n" should be.
  'mismatched-len': ['$10\r\nabc\r\n+OK\r\n:12345\r\n'],
  'deep-nesting': ['*1\r\n'.repeat(1000) + ':1\r\n'],
}
const UNSOLICITED = [Buffer.from('+OK\r\n'), Buffer.from('$5\r\nhello\r\n')]

/** Resolves on the socket's next 'drain', or when it closes (whichever comes first). */
function drainedOrClosed(socket) {
  return new Promise((resolve) => {
    const done = () => { socket.off('drain', done); socket.off('close', done); resolve() }
    socket.once('drain', done)
    socket.once('close', done)
  })
}

/**
 * Starts a proxy on a free 127.0.0.1 port in front of `target` (anything with a `port`, e.g. the
 * server `startRedis()` returns).
 */
export async function startFaultProxy(target) {
  let mode = 'pass'
  let opts = {}
  let unsolicitedTimer
  let unsolicitedTurn = 0
  /** Live connections: { client, upstream, … } per accepted client socket. */
  const connections = new Set()
  /** Connections accepted, flood bytes handed to sockets (not all necessarily read), since start. */
  const counters = { accepted: 0, floodBytes: 0 }

  // ---- server → client, per connection ------------------------------------------------------
  // Everything for the client goes through `send` or `trickle`, so bytes never overtake each
  // other: while a byte-by-byte queue is draining, later bytes wait behind it (also after the
  // mode went back to 'pass').
  function send(conn, buf) {
    if (conn.trickleQueue.length > 0) return trickle(conn, buf)
    if (!conn.client.write(buf) && !conn.upstream.isPaused()) {
      // The client reads slower than the server answers: stop reading the server meanwhile.
      conn.upstream.pause()
      conn.client.once('drain', () => conn.upstream.resume())
    }
  }

  // Queues `buf` and writes the queue out one byte per write, a setImmediate apart.
  function trickle(conn, buf) {
    conn.trickleQueue.push(buf)
    if (conn.trickling) return
    conn.trickling = true
    let offset = 0 // into trickleQueue[0]
    const next = () => {
      const head = conn.trickleQueue[0]
      if (conn.client.destroyed || !head) {
        conn.trickleQueue.length = 0
        conn.trickling = false
        return
      }
      conn.client.write(head.subarray(offset, offset + 1))
      if (++offset >= head.length) { conn.trickleQueue.shift(); offset = 0 }
      setImmediate(next)
    }
    next()
  }

  async function flood(conn) {
    conn.flooded = true
    const max = opts.maxBytes ?? FLOOD_LEN
    const { client } = conn
    client.write(`$${FLOOD_LEN}\r\n`)
    let sent = 0
    while (sent < max && mode === 'flood' && !client.destroyed) {
      const chunk = max - sent < FLOOD_CHUNK.length ? FLOOD_CHUNK.subarray(0, max - sent) : FLOOD_CHUNK
      sent += chunk.length
      counters.floodBytes += chunk.length
      if (!client.write(chunk)) await drainedOrClosed(client)
    }
  }

  /** A reply from the server, to be passed on, replaced or swallowed according to the mode. */
  function onServerReply(conn, buf) {
    switch (mode) {
      case 'pass': return send(conn, buf)
      case 'byte-by-byte': return trickle(conn, buf)
      case 'garbage': return send(conn, randomBytes(buf.length))
      case 'unsolicited':
        send(conn, UNSOLICITED[unsolicitedTurn++ % UNSOLICITED.length])
        return send(conn, buf)
      case 'truncate-close': {
        if (conn.client.destroyed) return
        const half = buf.subarray(0, Math.floor(buf.length / 2))
        conn.client.write(half, () => conn.client.destroy())
        return
      }
      // 'silent', 'flood' and the canned modes: the real reply is dropped.
      default: return undefined
    }
  }

  /** A request from the client (always forwarded); some modes answer it themselves. */
  function onClientRequest(conn, buf) {
    if (!conn.upstream.write(buf) && !conn.client.isPaused()) {
      conn.client.pause()
      conn.upstream.once('drain', () => conn.client.resume())
    }
    if (mode === 'flood' && !conn.flooded) flood(conn)
    const canned = CANNED[mode] && (opts.replies ?? CANNED[mode])
    if (canned) send(conn, Buffer.from(canned[conn.cannedTurn++ % canned.length]))
  }

  // ---- accepting ------------------------------------------------------------------------------
  const server = net.createServer({ noDelay: true }, (client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: target.port, noDelay: true })
    const conn = {
      client, upstream, trickleQueue: [], trickling: false, flooded: false, cannedTurn: 0,
    }
    connections.add(conn)
    counters.accepted++
    const closeBoth = () => {
      client.destroy()
      upstream.destroy()
      connections.delete(conn)
    }
    // A write before the upstream connection is up is buffered by net.Socket.
    client.on('data', (buf) => onClientRequest(conn, buf))
    upstream.on('data', (buf) => onServerReply(conn, buf))
    for (const s of [client, upstream]) {
      s.on('error', closeBoth) // a reset by either side is an expected outcome here
      s.on('close', closeBoth)
    }
  })

  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address()

  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    /** Live connections (`{ client, upstream, … }`), for assertions and debugging. */
    connections,
    /** { accepted, floodBytes } so far, for reports. */
    counters,
    get mode() { return mode },
    /** Switches every connection, existing and new, to `newMode` (see the list above). */
    setMode(newMode, newOpts = {}) {
      if (!MODES.includes(newMode)) throw new Error(`unknown fault-proxy mode ${newMode}`)
      mode = newMode
      opts = newOpts
      // A new flood spell floods every connection again, on its next request.
      for (const conn of connections) { conn.flooded = false; conn.cannedTurn = 0 }
      clearInterval(unsolicitedTimer)
      unsolicitedTimer = undefined
      if (mode === 'unsolicited') {
        // Replies to requests never made.
        unsolicitedTimer = setInterval(() => {
          for (const conn of connections) send(conn, UNSOLICITED[unsolicitedTurn++ % UNSOLICITED.length])
        }, opts.intervalMs ?? 20)
      }
    },
    /** Closes every connection and stops listening. */
    async close() {
      clearInterval(unsolicitedTimer)
      mode = 'pass' // ends any flood loop
      for (const conn of connections) { conn.client.destroy(); conn.upstream.destroy() }
      connections.clear()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}
