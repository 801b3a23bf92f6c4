#!/usr/bin/env node
// `npm test`: every gate, in the order a failure is cheapest to find.
//   cargo fmt --check, cargo clippy -D warnings, cargo test (the Rust core, with real Redis where
//   a test needs one), the release build of the addon, tsc on index.d.ts, vitest (contract,
//   integration against real redis-server, end to end against next build/next start).
// Prints one closing line "N passed, N failed" over all runners.
import { spawn } from 'node:child_process'
import { readFileSync, mkdirSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const args = new Set(process.argv.slice(2))
let passed = 0
let failed = 0

function run(title, cmd, cmdArgs, { capture = false, env = {} } = {}) {
  console.log(`\n==> ${title}: ${cmd} ${cmdArgs.join(' ')}`)
  const started = Date.now()
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, cmdArgs, {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: capture ? ['ignore', 'pipe', 'pipe'] : 'inherit',
    })
    let out = ''
    if (capture) {
      child.stdout.on('data', (d) => { out += d; process.stdout.write(d) })
      child.stderr.on('data', (d) => { out += d; process.stderr.write(d) })
    }
    child.on('error', reject)
    child.on('close', (code) => {
      console.log(`<== ${title}: exit ${code} in ${((Date.now() - started) / 1000).toFixed(1)} s`)
      resolve({ code, out })
    })
  })
}

async function main() {
  const steps = [
    ['rustfmt', 'cargo', ['fmt', '--all', '--', '--check']],
    ['clippy', 'cargo', ['clippy', '--workspace', '--all-targets', '--locked', '--', '-D', 'warnings']],
  ]
  for (const [title, cmd, a] of steps) {
    const { code } = await run(title, cmd, a)
    if (code !== 0) return finish(code)
  }

  const cargo = await run('cargo test', 'cargo', ['test', '--workspace', '--locked'], { capture: true })
  for (const m of cargo.out.matchAll(/test result: \w+\. (\d+) passed; (\d+) failed/g)) {
    passed += Number(m[1])
    failed += Number(m[2])
  }
  if (cargo.code !== 0) return finish(cargo.code)

  const build = await run('addon (release)', 'npx', ['napi', 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])
  if (build.code !== 0) return finish(build.code)

  const tsc = await run('types', 'npx', ['tsc', '-p', 'tsconfig.json'])
  if (tsc.code !== 0) return finish(tsc.code)

  const tmp = join(root, '.tmp')
  mkdirSync(tmp, { recursive: true })
  const report = join(tmp, 'vitest.json')
  rmSync(report, { force: true })
  const vitestArgs = ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`]
  if (args.has('--no-e2e')) vitestArgs.push('--project', 'unit')
  const vitest = await run('vitest', 'npx', vitestArgs)
  try {
    const r = JSON.parse(readFileSync(report, 'utf8'))
    passed += r.numPassedTests
    failed += r.numFailedTests
  } catch {
    failed += 1
    console.error('could not read the vitest report')
  }
  return finish(vitest.code)
}

function finish(code) {
  console.log(`\n${passed} passed, ${failed} failed`)
  process.exit(code === 0 && failed === 0 ? 0 : code || 1)
}

main().catch((err) => {
  console.error(err)
  finish(1)
})
