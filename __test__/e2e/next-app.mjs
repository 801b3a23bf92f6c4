// End-to-end harness: builds the example app (examples/demo) with `next build` and runs it with
// `next start` on a free loopback port. `startServer()` may be called several times (e.g. two
// instances sharing one Redis through `env`); every server is stopped by killing its whole
// process group, also when a test fails or the start times out.
//
// `buildApp`, `startServer` and `findServerActionId` take an optional `dir` (another example app,
// e.g. examples/isr); without it they use `appDir`.
//
// Environment:
//   STRATA_E2E_APP_DIR     app to build/serve (default: <repo>/examples/demo)
//   STRATA_E2E_SKIP_BUILD  =1: reuse an existing .next build (fast iteration)
//   STRATA_E2E_VERBOSE     =1: echo build and server output
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
export const appDir = path.resolve(process.env.STRATA_E2E_APP_DIR || path.join(repoRoot, 'examples/demo'))
const nextBin = path.join(repoRoot, 'node_modules/next/dist/bin/next')
const verbose = process.env.STRATA_E2E_VERBOSE === '1'
// Process groups of running servers, one file each (`<run>-<pgid>`), so the global teardown can
// kill servers that a crashed test worker left behind. `run` is set by global-setup.mjs.
const registryDir = path.join(repoRoot, '.tmp/e2e-servers')
const runId = () => process.env.STRATA_E2E_RUN || 'manual'

/** Environment for `next build` / `next start`: the caller's, minus what the test runner set. */
export function childEnv(extra = {}) {
  const env = { ...process.env }
  // vitest sets NODE_ENV=test; Next would warn and must run as production.
  delete env.NODE_ENV
  for (const key of Object.keys(env)) if (key.startsWith('VITEST')) delete env[key]
  return { ...env, NEXT_TELEMETRY_DISABLED: '1', ...extra }
}

/** Fails early, with a useful message, when `strata-cache` can't be loaded from the app. */
export function checkHandlerLoads({ env = {} } = {}) {
  const probe = spawnSync(
    process.execPath,
    [
      '-e',
      `const r = require('node:module').createRequire(require('node:path').join(process.cwd(), 'next.config.ts'));
       const handler = require(r.resolve('strata-cache/use-cache'));
       for (const m of ['get', 'set', 'refreshTags', 'getExpiration', 'updateTags'])
         if (typeof (handler.default || handler)[m] !== 'function') throw new Error('handler has no ' + m + '()');
       const s = r('strata-cache').stats();
       if (!s || !s.calls) throw new Error('stats() returned ' + JSON.stringify(s));`,
    ],
    { cwd: appDir, env: childEnv(env), encoding: 'utf8' },
  )
  if (probe.status !== 0) {
    throw new Error(
      `strata-cache cannot be loaded from ${appDir} (build the addon with \`npm run build\` or \`npm run build:debug\`):\n${probe.stderr}`,
    )
  }
}

/** `next build` of the app (`dir`, default `appDir`); throws with the build output on failure. */
/** The `next` an app runs with: its own when it has one in node_modules, else the repo's. */
function nextBinFor(dir) {
  const own = path.join(dir, 'node_modules/next/dist/bin/next')
  return fs.existsSync(own) ? own : nextBin
}

export async function buildApp({ env = {}, dir = appDir } = {}) {
  const started = Date.now()
  const child = spawn(process.execPath, [nextBinFor(dir), 'build'], {
    cwd: dir,
    env: childEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  const collect = (chunk) => {
    output += chunk
    if (verbose) process.stderr.write(chunk)
  }
  child.stdout.setEncoding('utf8').on('data', collect)
  child.stderr.setEncoding('utf8').on('data', collect)
  const [code, signal] = await once(child, 'exit')
  if (code !== 0) throw new Error(`next build failed (${code ?? signal}) in ${dir}:\n${output}`)
  return { output, ms: Date.now() - started }
}

/** A port that was free a moment ago: bind port 0 on loopback and release it. */
export async function freePort(host = '127.0.0.1') {
  const server = net.createServer()
  server.listen(0, host)
  await once(server, 'listening')
  const { port } = server.address()
  server.close()
  await once(server, 'close')
  return port
}

const live = new Set()
process.on('exit', () => {
  for (const server of live) server.kill('SIGKILL')
})

/** Kills the process groups still recorded for this run (used by the global teardown). */
export function killLeftoverServers(run = runId()) {
  let entries = []
  try {
    entries = fs.readdirSync(registryDir)
  } catch {
    return []
  }
  const killed = []
  for (const name of entries) {
    if (!name.startsWith(`${run}-`)) continue
    const pgid = Number(name.slice(run.length + 1))
    if (Number.isInteger(pgid) && pgid > 1) {
      try {
        process.kill(-pgid, 'SIGKILL')
        killed.push(pgid)
      } catch {}
    }
    fs.rmSync(path.join(registryDir, name), { force: true })
  }
  return killed
}

/**
 * Starts the app's server: `next start` of the built app (`mode: 'start'`, the default),
 * `next dev` (`'dev'`), or the `server.js` of an `output: 'standalone'` build (`'standalone'`,
 * `dir` = that directory). Resolves once the server printed its "Ready" line and answered one
 * request. Options: `env` (merged over the caller's environment), `port` (default: a free one),
 * `host` (default 127.0.0.1), `readyTimeoutMs`, `dir` (the app, default `appDir`), `probePath`
 * (the first request, must answer 200; default `/api/strata-stats`).
 */
export async function startServer({
  env = {},
  port,
  host = '127.0.0.1',
  readyTimeoutMs = 30_000,
  dir = appDir,
  probePath = '/api/strata-stats',
  mode = 'start',
} = {}) {
  if (mode !== 'dev' && !fs.existsSync(path.join(dir, '.next/BUILD_ID'))) {
    throw new Error(`${dir} is not built: run the e2e tests through vitest (global-setup builds it) or \`next build\``)
  }
  port ??= await freePort(host)
  const args = mode === 'standalone' ? ['server.js'] : [nextBinFor(dir), mode, '-p', String(port), '-H', host]
  const child = spawn(process.execPath, args, {
    cwd: dir,
    env: childEnv({ PORT: String(port), HOSTNAME: host, ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // own process group, so stop() reaches everything Next spawns
  })
  const pgid = child.pid
  const registryFile = path.join(registryDir, `${runId()}-${pgid}`)
  let output = ''
  let exited = null
  const exitPromise = once(child, 'exit').then(([code, signal]) => {
    exited = { code, signal }
    live.delete(server)
    fs.rmSync(registryFile, { force: true })
    return exited
  })
  fs.mkdirSync(registryDir, { recursive: true })
  fs.writeFileSync(registryFile, `${dir}\n`)

  const url = `http://${host}:${port}`
  const server = {
    url,
    port,
    pid: child.pid,
    dir,
    /** Everything the server printed so far (stdout and stderr interleaved). */
    output: () => output,
    kill(signal) {
      if (exited) return
      try {
        process.kill(-pgid, signal)
      } catch {}
    },
    /** Stops the server: SIGTERM to the process group, SIGKILL after `graceMs`. Idempotent. */
    async stop({ graceMs = 5_000 } = {}) {
      if (!exited) {
        server.kill('SIGTERM')
        const timer = setTimeout(() => server.kill('SIGKILL'), graceMs)
        await exitPromise
        clearTimeout(timer)
      }
      // Next may have left helpers in the group; make sure none survives.
      try {
        process.kill(-pgid, 'SIGKILL')
      } catch {}
      return exited
    },
    /** GET (or `init.method`) a path; returns `{ status, headers, text }` with lower-case header names. */
    async fetchPage(pathname, init = {}) {
      const res = await fetch(new URL(pathname, url), { redirect: 'manual', ...init })
      return { status: res.status, headers: Object.fromEntries(res.headers), text: await res.text() }
    },
    /** Process-wide strata-cache counters of this server (`/api/strata-stats`). */
    async stats() {
      const res = await server.fetchPage('/api/strata-stats')
      if (res.status !== 200) throw new Error(`/api/strata-stats answered ${res.status}: ${res.text.slice(0, 500)}`)
      return JSON.parse(res.text)
    },
    /**
     * `/api/revalidate`: `{ tag }` → revalidateTag(tag, 'max'); `{ tag, expire }` →
     * revalidateTag(tag, { expire }); `{ path }` → revalidatePath(path).
     */
    async revalidate({ tag, path: pathToRevalidate, expire } = {}) {
      const query = new URLSearchParams()
      if (tag !== undefined) query.append('tag', tag)
      if (pathToRevalidate !== undefined) query.append('path', pathToRevalidate)
      if (expire !== undefined) query.append('expire', String(expire))
      const res = await server.fetchPage(`/api/revalidate?${query}`, { method: 'POST' })
      if (res.status !== 200) throw new Error(`/api/revalidate?${query} answered ${res.status}: ${res.text.slice(0, 500)}`)
      return JSON.parse(res.text)
    },
    /**
     * Invokes the server action exported as `actionName` the way Next's client router does
     * (`Next-Action` header, RSC response), as rendered by `page`. Returns `{ status, headers, text }`;
     * `text` is the RSC payload of the action result and of the re-rendered page.
     */
    async callServerAction(page, actionName, args = []) {
      const id = findServerActionId(page, actionName, dir)
      return server.fetchPage(page, {
        method: 'POST',
        headers: {
          'next-action': id,
          accept: 'text/x-component',
          'content-type': 'text/plain;charset=UTF-8',
        },
        body: JSON.stringify(args),
      })
    },
  }
  live.add(server)

  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`next ${mode} did not print "Ready" within ${readyTimeoutMs} ms:\n${output}`)),
        readyTimeoutMs,
      )
      const onData = (chunk) => {
        output += chunk
        if (verbose) process.stderr.write(chunk)
        if (/\bReady in\b/.test(output)) {
          clearTimeout(timer)
          resolve()
        }
      }
      child.stdout.setEncoding('utf8').on('data', onData)
      child.stderr.setEncoding('utf8').on('data', onData)
      exitPromise.then(({ code, signal }) => {
        clearTimeout(timer)
        reject(new Error(`next ${mode} exited (${code ?? signal}) before it was ready:\n${output}`))
      })
    })
    // "Ready" is printed once the socket listens; one request confirms it serves the app.
    const probe = await server.fetchPage(probePath)
    if (probe.status !== 200) throw new Error(`first request answered ${probe.status}: ${probe.text.slice(0, 500)}\n${output}`)
  } catch (err) {
    await server.stop()
    throw err
  }
  return server
}

/** The action id of `actionName` as bundled for `page`, from the build's server-reference manifest. */
export function findServerActionId(page, actionName, dir = appDir) {
  const manifestPath = path.join(dir, '.next/server/server-reference-manifest.json')
  const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'))
  const worker = page === '/' ? 'app/page' : `app${page.replace(/\/$/, '')}/page`
  const candidates = []
  for (const [id, entry] of Object.entries(manifest.node ?? {})) {
    if (entry.exportedName === actionName && entry.workers?.[worker]) return id
    if (!entry.exportedName?.startsWith('$$RSC_SERVER_CACHE')) candidates.push(`${entry.exportedName} (${Object.keys(entry.workers ?? {}).join(', ')})`)
  }
  throw new Error(`no server action "${actionName}" for ${worker} in ${manifestPath}; actions: ${candidates.join('; ') || 'none'}`)
}

/**
 * The text of the element with `data-testid="<testid>"`, from an HTML page or from an RSC
 * payload (`["$","code",null,{"data-testid":"x","children":"…"}]`). Throws if absent.
 */
export function parseValue(text, testid) {
  const id = testid.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const html = new RegExp(`<[a-zA-Z][^>]*\\sdata-testid="${id}"[^>]*>([^<]*)<`).exec(text)
  if (html) return html[1]
  const rsc = new RegExp(`"data-testid":"${id}","children":"([^"\\\\]*)"`).exec(text)
  if (rsc) return rsc[1]
  throw new Error(`no element with data-testid="${testid}" in response:\n${text.slice(0, 2000)}`)
}

/** Creation time (ms since epoch) encoded in a demo value (`<Date.now()>-<random>`). */
export function valueTime(value) {
  const ms = Number(String(value).split('-')[0])
  if (!Number.isFinite(ms) || ms <= 0) throw new Error(`not a demo value: ${value}`)
  return ms
}

/** Waits until `ms` after the creation time of `value` (for cacheLife windows: no event exists). */
export async function waitUntilAge(value, ms) {
  const wait = valueTime(value) + ms - Date.now()
  if (wait > 0) await delay(wait)
}
