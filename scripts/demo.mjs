#!/usr/bin/env node
// `npm run demo`: build the native addon if it is missing, `next build` examples/demo, then
// `next start` it on HOST:PORT (default 127.0.0.1:3000) with strata-cache as its 'use cache'
// handler. Ctrl-C (SIGINT) or SIGTERM stops the server.
//
//   PORT=4000 npm run demo
//   REDIS_URL=redis://127.0.0.1:6379 npm run demo   # passed through to the handler
//   npm run demo -- --skip-build                    # reuse the last `next build`
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const appDir = path.join(root, 'examples/demo')
const nextBin = path.join(root, 'node_modules/next/dist/bin/next')
const port = process.env.PORT || '3000'
const host = process.env.HOST || '127.0.0.1'
const skipBuild = process.argv.includes('--skip-build')
const env = { ...process.env, NEXT_TELEMETRY_DISABLED: '1' }
delete env.NODE_ENV // `next build`/`next start` set it themselves

let current = null // the child running now; signals go to it
let stopping = false
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    stopping = true
    if (current && current.exitCode === null) current.kill(signal)
    else process.exit(130)
  })
}

function run(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: 'inherit', env, ...opts })
    current = child
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      current = null
      if (code === 0) resolve()
      else reject(Object.assign(new Error(`${[cmd, ...args].join(' ')} failed (${code ?? signal})`), { code, signal }))
    })
  })
}

/** File name napi-rs gives the addon for this platform (`napi build --platform`). */
function addonFile() {
  let abi = ''
  if (process.platform === 'linux') {
    abi = process.report?.getReport?.().header?.glibcVersionRuntime ? '-gnu' : '-musl'
  }
  return `strata-cache.${process.platform}-${process.arch}${abi}.node`
}

function redact(url) {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return '(unparsable REDIS_URL)'
  }
}

async function main() {
  const addon = addonFile()
  // Always through cargo: a no-op when the addon is up to date, a rebuild when the Rust changed.
  console.log(`[demo] building the addon if needed (${addon}, npm run build)`)
  await run(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['run', 'build'], { cwd: root })
  if (!(skipBuild && fs.existsSync(path.join(appDir, '.next/BUILD_ID')))) {
    console.log('[demo] next build examples/demo')
    await run(process.execPath, [nextBin, 'build'], { cwd: appDir })
  }
  if (stopping) return

  console.log(
    `[demo] cache handler: strata-cache (${env.REDIS_URL ? `L2: ${redact(env.REDIS_URL)}` : 'embedded, in-process only'})`,
  )
  const server = spawn(process.execPath, [nextBin, 'start', '-p', port, '-H', host], {
    cwd: appDir,
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  current = server
  let announced = false
  server.stdout.on('data', (chunk) => {
    process.stdout.write(chunk)
    if (!announced && /\bReady in\b/.test(String(chunk))) {
      announced = true
      const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`
      console.log(`\n[demo] open ${url}/  (pages: / /action /remote /nested /static /no-cache; counters: ${url}/api/strata-stats)`)
      console.log('[demo] Ctrl-C stops the server\n')
    }
  })
  const [code, signal] = await new Promise((resolve) => server.on('exit', (c, s) => resolve([c, s])))
  current = null
  process.exitCode = stopping ? 0 : code ?? (signal ? 1 : 0)
}

main().catch((err) => {
  console.error(`[demo] ${err.message}`)
  process.exitCode = stopping ? 0 : 1
})
