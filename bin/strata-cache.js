#!/usr/bin/env node
'use strict'
/**
 * The strata-cache command line.
 *
 *   npx strata-cache doctor [--json] [--timeout <ms>] [--dist-dir <dir>]
 *
 * `doctor` resolves the configuration exactly as the server does at run time (the same
 * environment variables; run it with the server's environment, from the app's directory), then
 * checks Redis: round trip and clock offset, the Lua scripts, the server version and its
 * eviction policy. It prints a verdict with what to fix and exits 0 (ok, or warnings only) or 1
 * (a problem), so it serves as a readiness probe. It never waits past `--timeout` (default
 * 10 s) and never prints a credential.
 */
const { parseArgs } = require('node:util')

const USAGE = `usage: strata-cache doctor [--json] [--timeout <ms>] [--dist-dir <dir>]

  doctor     check the configuration and Redis as the server would see them
  --json     print the report as JSON
  --timeout  give up after this many ms (default 10000)
  --dist-dir the app's .next directory, for the namespace from BUILD_ID (default ./.next)`

function fail(message) {
  process.stderr.write(`strata-cache: ${message}\n${USAGE}\n`)
  process.exit(2)
}

async function main() {
  let parsed
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        json: { type: 'boolean', default: false },
        timeout: { type: 'string', default: '10000' },
        'dist-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (err) {
    fail(err.message)
  }
  const { values, positionals } = parsed
  if (values.help) {
    process.stdout.write(`${USAGE}\n`)
    return 0
  }
  if (positionals.length !== 1 || positionals[0] !== 'doctor') fail(`unknown command: ${positionals.join(' ') || '(none)'}`)
  const timeoutMs = Number(values.timeout)
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) fail(`--timeout must be a whole number of ms, got ${values.timeout}`)

  const { doctor } = require('../index.js')
  let timer
  const deadline = new Promise((resolve) => {
    timer = setTimeout(() => resolve(null), timeoutMs)
  })
  const report = await Promise.race([doctor({ distDir: values['dist-dir'] }), deadline])
  clearTimeout(timer)
  const result = report ?? {
    verdict: 'fail',
    checks: [{ name: 'doctor', status: 'fail', detail: `no answer within ${timeoutMs} ms (--timeout)` }],
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
  } else {
    const mark = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL' }
    for (const c of result.checks) process.stdout.write(`${mark[c.status] ?? c.status} ${c.name.padEnd(10)} ${c.detail}\n`)
    const summary = {
      ok: 'ready: strata-cache can serve this deployment',
      warn: 'ready, with warnings (see above)',
      fail: 'NOT ready: fix the FAIL lines above',
    }
    process.stdout.write(`\n${summary[result.verdict] ?? result.verdict}\n`)
  }
  return result.verdict === 'fail' ? 1 : 0
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`strata-cache: ${err && err.message ? err.message : err}\n`)
    process.exit(1)
  },
)
