// Apps that install strata-cache as a user does: the npm tarballs of the main package and of
// this platform's package (its prebuilt binary), in a directory outside the repository, with
// the Next version asked for, and no Rust toolchain on PATH.
//
//   const packed = packStrataCache(work)            // once per test file
//   const app = installApp(dir, packed, { next: '16.2.12', files: { 'app/page.js': '…' } })
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { childEnv, repoRoot } from './next-app.mjs'

const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'))
export const platform = `${process.platform}-${process.arch}-gnu`
export const platformPkg = `strata-cache-${platform}`

/** PATH without any Rust toolchain: a user installing from npm has none. */
export const PATH = process.env.PATH.split(path.delimiter)
  .filter((d) => !fs.existsSync(path.join(d, 'cargo')) && !d.includes('.cargo'))
  .join(path.delimiter)
/** The environment installed apps build and run with. */
export const env = { PATH, STRATA_LOG: 'warn' }

function npm(args, cwd) {
  return execFileSync('npm', [...args, '--no-audit', '--no-fund', '--fetch-retries=1'], { cwd, encoding: 'utf8', env: childEnv(env) })
}

/** The version of `dep` the repo itself runs with. */
export function repoVersion(dep) {
  return JSON.parse(fs.readFileSync(path.join(repoRoot, 'node_modules', dep, 'package.json'), 'utf8')).version
}

/** Packs both packages into `work`: `{ main, platform }` tarball paths. */
export function packStrataCache(work) {
  const plat = path.join(work, 'platform')
  fs.mkdirSync(plat, { recursive: true })
  fs.copyFileSync(path.join(repoRoot, 'npm', platform, 'package.json'), path.join(plat, 'package.json'))
  const addon = `strata-cache.${platform}.node`
  fs.copyFileSync(path.join(repoRoot, addon), path.join(plat, addon))
  npm(['pack', '--pack-destination', work], plat)
  npm(['pack', '--pack-destination', work], repoRoot)
  return {
    main: path.join(work, `strata-cache-${pkg.version}.tgz`),
    platform: path.join(work, `${platformPkg}-${pkg.version}.tgz`),
  }
}

/**
 * Writes `files` into `dir` and installs the packed strata-cache with next/react at `versions`
 * (default: the repo's), from npm's cache when it has them (`--prefer-offline`).
 */
export function installApp(dir, packed, { files, devDependencies = {}, next = repoVersion('next'), react = repoVersion('react') } = {}) {
  const write = (file, text) => {
    fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true })
    fs.writeFileSync(path.join(dir, file), text)
  }
  write('package.json', JSON.stringify({
    name: 'installed-app',
    private: true,
    dependencies: {
      next,
      react,
      'react-dom': react,
      'strata-cache': `file:${packed.main}`,
      [platformPkg]: `file:${packed.platform}`,
    },
    devDependencies,
  }))
  for (const [file, text] of Object.entries(files)) write(file, text)
  npm(['install', '--prefer-offline'], dir)
  return dir
}
