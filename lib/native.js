'use strict'
/**
 * The native addon, loaded once. The napi-rs loader (`binding.js`, generated) looks for
 * `strata-cache.<platform>.node` next to the package (a build from source), then for the
 * platform package npm installed as an optional dependency (`strata-cache-linux-x64-gnu`, …).
 * When neither is there, the error says which platform this is, which package was expected and
 * how to get one, instead of the loader's list of require failures.
 */
const { StrataError } = require('./errors.js')

/** The platform packages published with each release (package.json `napi.targets`). */
const PLATFORMS = ['linux-x64-gnu', 'linux-arm64-gnu', 'linux-x64-musl', 'linux-arm64-musl', 'darwin-arm64', 'darwin-x64']

/** This machine as napi-rs names platforms (`linux-x64-gnu`, `darwin-arm64`, …). */
function platformName() {
  let name = `${process.platform}-${process.arch}`
  if (process.platform === 'linux') {
    const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null
    const glibc = report && report.header && report.header.glibcVersionRuntime
    name += glibc ? '-gnu' : '-musl'
  }
  return name
}

function load() {
  try {
    return require('../binding.js')
  } catch (err) {
    const platform = platformName()
    const supported = PLATFORMS.includes(platform)
    const message = supported
      ? `strata-cache: no native binary for ${platform}. npm installs it as the optional dependency ` +
        `strata-cache-${platform}: check it is in node_modules (installs with --no-optional / ` +
        `--omit=optional, or a lockfile made on another platform, leave it out; reinstall on this ` +
        `platform, e.g. in the Docker image that runs the app).`
      : `strata-cache: no prebuilt binary for ${platform} (prebuilt: ${PLATFORMS.join(', ')}). ` +
        `Build it from source: clone the strata-cache repository, install a Rust toolchain ` +
        `(https://rustup.rs), run \`npm install && npm run build\` there, and install that ` +
        `checkout into your app (\`npm install /path/to/strata-cache\`).`
    throw new StrataError('STRATA_NO_BINARY', message, { cause: err })
  }
}

module.exports = load()
