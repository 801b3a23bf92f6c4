// The handlers under test and the stream helpers, shared by bench/run.mjs and its memory child.
import { createRequire } from 'node:module';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const require = createRequire(import.meta.url);
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

// Next's own helpers, used verbatim: the built-in handler's get returns
// `streamFromBuffer(storedBuffer)`; `streamToBuffer` is `Buffer.concat(await streamToChunks(s))`.
const webStreams = require('next/dist/server/stream-utils/node-web-streams-helper');
export const { streamFromBuffer, streamToBuffer } = webStreams;
export const NEXT_VERSION = require('next/package.json').version;

/** Next's built-in 'use cache' handler, the one `cacheHandlers.default` falls back to. */
export function createBuiltin(maxBytes) {
  const { createDefaultCacheHandler } = require('next/dist/server/lib/cache-handlers/default');
  return createDefaultCacheHandler(maxBytes);
}

/** Section names of an ELF64 little-endian file (empty if it is not one). */
function elfSections(bytes) {
  if (bytes.length < 64 || bytes.readUInt32BE(0) !== 0x7f454c46 || bytes[4] !== 2 || bytes[5] !== 1) return [];
  const shoff = Number(bytes.readBigUInt64LE(0x28));
  const shentsize = bytes.readUInt16LE(0x3a);
  const shnum = bytes.readUInt16LE(0x3c);
  const shstrndx = bytes.readUInt16LE(0x3e);
  const header = (i) => shoff + i * shentsize;
  if (shoff === 0 || header(shnum) > bytes.length || shstrndx >= shnum) return [];
  const strOff = Number(bytes.readBigUInt64LE(header(shstrndx) + 0x18));
  const names = [];
  for (let i = 0; i < shnum; i++) {
    const nameOff = strOff + bytes.readUInt32LE(header(i));
    const end = bytes.indexOf(0, nameOff);
    names.push(bytes.toString('latin1', nameOff, end));
  }
  return names;
}

/**
 * Which addon binary ours loads, and whether it is a debug build: `npm run build` (release
 * profile, `strip = "symbols"`) leaves no `.debug_info` section; `build:debug` does, and its
 * native calls are several times slower.
 */
export function addonInfo(dir = ROOT) {
  const file = process.env.NAPI_RS_NATIVE_LIBRARY_PATH
    ? path.resolve(process.env.NAPI_RS_NATIVE_LIBRARY_PATH)
    : path.join(dir, 'strata-cache.linux-x64-gnu.node');
  if (!existsSync(file)) return undefined;
  const debug = elfSections(readFileSync(file)).includes('.debug_info');
  const st = statSync(file);
  return { file, debug, sizeMB: +(st.size / 1048576).toFixed(1), mtime: st.mtime.toISOString() };
}

// Next's interopDefault (`mod.default || mod`), applied twice as Next does; a module may point
// `default` at itself (use-cache.js does), so never recurse further.
const interopOnce = (m) => (m && m.default) || m;
const interop = (m) => interopOnce(interopOnce(m));

/**
 * Ours. Prefer a fresh instance from `createUseCacheHandler({ l1MaxBytes })` (index.js) so the L1
 * size is the bench's; fall back to the ready-made default export of use-cache.js (resolved the
 * way Next does: `mod.default || mod`, twice). Returns { handler, how } or { error }.
 * STRATA_BENCH_OURS=/path/to/module (or `--ours=PATH` on run.mjs) benches another build instead.
 */
export function createOurs(l1MaxBytes, modulePath = process.env.STRATA_BENCH_OURS) {
  const nodeFiles = existsSync(ROOT) ? readdirSync(ROOT).filter((f) => f.endsWith('.node')) : [];
  const errors = [];
  const main = modulePath ? path.resolve(modulePath) : path.join(ROOT, 'index.js');
  const viaUseCache = process.env.STRATA_BENCH_VIA_USE_CACHE === '1';
  if (viaUseCache) {
    // What a Next app configures: the ready-made handler of use-cache.js, sized from the env.
    const file = path.join(modulePath ? path.dirname(main) : ROOT, 'use-cache.js');
    process.env.STRATA_L1_MAX_BYTES = String(l1MaxBytes);
    try {
      const h = interop(require(file));
      const m = require(path.join(path.dirname(file), 'index.js'));
      return { handler: h, module: m, how: `${path.relative(ROOT, file)} default export, STRATA_L1_MAX_BYTES=${l1MaxBytes}`, nodeFiles };
    } catch (e) {
      return { error: `${file}: ${e.message}`, nodeFiles };
    }
  }
  if (existsSync(main)) {
    try {
      const m = require(main);
      const create = m.createUseCacheHandler || (m.default && m.default.createUseCacheHandler);
      if (typeof create === 'function') {
        return { handler: create({ l1MaxBytes }), module: m, how: `${path.relative(ROOT, main)} createUseCacheHandler({ l1MaxBytes: ${l1MaxBytes} })`, nodeFiles };
      }
      const h = interop(m);
      if (modulePath && h && typeof h.get === 'function') return { handler: h, how: `${main} default export`, nodeFiles };
      errors.push(`${path.relative(ROOT, main)} has no createUseCacheHandler`);
    } catch (e) {
      errors.push(`${path.relative(ROOT, main)}: ${e.message}`);
    }
  }
  if (!modulePath && existsSync(path.join(ROOT, 'use-cache.js'))) {
    try {
      const h = interop(require(path.join(ROOT, 'use-cache.js')));
      if (h && typeof h.get === 'function') return { handler: h, how: 'use-cache.js default export (its own L1 size)', nodeFiles };
      errors.push('use-cache.js does not export a handler object');
    } catch (e) {
      errors.push(`use-cache.js: ${e.message}`);
    }
  }
  if (errors.length === 0) errors.push('index.js / use-cache.js not present (addon not built yet?)');
  return { error: errors.join('; '), nodeFiles };
}

/** Next hands `set` a stream over already-buffered chunks; this is that stream. */
export function streamOf(chunk) {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(chunk);
      controller.close();
    },
  });
}

/** Reader (i): collect the chunks without copying them (what React's Flight client does). */
export async function readNoCopy(stream) {
  const reader = stream.getReader();
  const chunks = [];
  let bytes = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    bytes += value.byteLength;
  }
  return { chunks, bytes };
}

// Next's default profile (`cacheLife('default')`): stale 5 min, revalidate 15 min, expire "never".
export const PROFILE = { stale: 300, revalidate: 900, expire: 0xfffffffe };
export const ENTRY_TAGS = ['products', 'bench'];
export const SOFT_TAGS = ['_N_T_/layout', '_N_T_/bench/layout', '_N_T_/bench/page', '_N_T_/bench'];

/** A cache key shaped like Next's (build id, function id, serialized args), ~130 chars. */
export function cacheKey(kind, size, i = 0) {
  return `["b1d5a9c0e7f2","c0ffee00d15ea5e5ba5eba11c0ffee00d15ea5e5",[{"kind":"${kind}","size":${size},"i":${i}}],"$undefined"]`;
}

export function entryOf(chunk) {
  return {
    value: streamOf(chunk),
    tags: ENTRY_TAGS,
    ...PROFILE,
    timestamp: performance.timeOrigin + performance.now(),
  };
}

// ---------------------------------------------------------------------------------------------
// The singular `cacheHandler` (Next's incremental cache), for bench/incremental.mjs.

/**
 * The context Next's IncrementalCache hands its handler class
 * (next/dist/server/lib/incremental-cache/index.js: `new CurCacheHandler({ dev, fs, flushToDisk,
 * serverDistDir, revalidatedTags, maxMemoryCacheSize, _requestHeaders, fetchCacheKeyPrefix })`),
 * with next start's defaults: `fs` = Next's node fs wrapper, `flushToDisk` true
 * (`experimental.isrFlushToDisk`), `maxMemoryCacheSize` = `cacheMaxMemorySize` (50 MiB).
 */
export function incrementalHandlerContext(serverDistDir, { flushToDisk = true, maxMemoryCacheSize = 50 * 1024 * 1024 } = {}) {
  const { nodeFs } = require('next/dist/server/lib/node-fs-methods.js');
  return { dev: false, fs: nodeFs, flushToDisk, serverDistDir, revalidatedTags: [], maxMemoryCacheSize, _requestHeaders: {}, fetchCacheKeyPrefix: '' };
}

/**
 * Next's built-in incremental handler, `FileSystemCache`, constructed as IncrementalCache does.
 * Its memory cache is one LRU per process (`memory-cache.external.js`), shared by every
 * instance and sized by the first; `memoryCache()` returns it.
 */
export function createIncrementalBuiltin(serverDistDir, options) {
  const FileSystemCache = interop(require('next/dist/server/lib/incremental-cache/file-system-cache.js'));
  const ctx = incrementalHandlerContext(serverDistDir, options);
  return { Handler: FileSystemCache, ctx, handler: new FileSystemCache(ctx), memoryCache: () => FileSystemCache.memoryCache };
}

/**
 * Ours: the class `createIncrementalCacheHandler(options)` returns (what `strata-cache/incremental`
 * exports, configured in code), an instance of it, and the pieces the bench times alone: the
 * native binding, the codec (lib/incremental-codec.js) and the store-key prefix. `modulePath`:
 * another build's index.js (default: this package, `require('strata-cache')`).
 */
export function createIncrementalOurs(options, ctx, modulePath) {
  const main = modulePath ? path.resolve(modulePath) : require.resolve('strata-cache');
  const dir = path.dirname(main);
  const m = require(main);
  const Handler = m.createIncrementalCacheHandler(options);
  return {
    Handler,
    handler: new Handler(ctx),
    module: m,
    native: require(path.join(dir, 'binding.js')),
    codec: require(path.join(dir, 'lib', 'incremental-codec.js')),
    KEY_PREFIX: require(path.join(dir, 'lib', 'incremental.js')).KEY_PREFIX,
    how: `${path.relative(ROOT, main) || main} createIncrementalCacheHandler(${JSON.stringify(options)})`,
    addon: addonInfo(dir),
  };
}
