// Real redis-server processes for tests: one standalone server, or a small cluster.
//
//   import { startRedis, startCluster } from './helpers/redis-server.mjs'
//   const redis = await startRedis()            // { port, url, pid, cli(...args), stop(), restart() }
//   await redis.cli('SET', 'k', 'v')             // runs `redis-cli -p PORT SET k v`, returns stdout
//   await redis.stop()
//
//   const cluster = await startCluster({ masters: 3 })   // { nodes: [{ port, url, cli, … }], url, cli, stop() }
//
// Every server binds 127.0.0.1 on a free port, keeps nothing on disk (`--save '' --appendonly no`,
// its own temp dir as `--dir`), runs in the foreground, and is ready when its log says "Ready to
// accept connections" (an event on its stdout, not a sleep). Servers are killed when the test
// process exits, even after a failure: an 'exit' hook, SIGINT/SIGTERM hooks, and, where
// util-linux `setpriv` exists, PR_SET_PDEATHSIG=SIGKILL so a hard-killed test worker does not leak
// servers either.
import { spawn, execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const REDIS_SERVER = process.env.REDIS_SERVER_BIN || (existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : 'redis-server');
const REDIS_CLI = process.env.REDIS_CLI_BIN || (existsSync('/usr/bin/redis-cli') ? '/usr/bin/redis-cli' : 'redis-cli');
const SETPRIV = existsSync('/usr/bin/setpriv') ? '/usr/bin/setpriv' : undefined;
const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5_000;

// ---- cleanup on exit ------------------------------------------------------------------------
const live = new Set(); // ChildProcess objects still running
const tempDirs = new Set();
let hooksInstalled = false;
function killAllNow() {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
  live.clear();
  for (const dir of tempDirs) {
    try { rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
  }
  tempDirs.clear();
}
function installHooks() {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', killAllNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    // Only take over the signal if nobody else did; after cleaning up, re-raise it so the
    // default action (exit) still happens.
    if (process.listenerCount(sig) > 0) continue;
    process.once(sig, () => {
      killAllNow();
      process.kill(process.pid, sig);
    });
  }
}

// ---- small utilities ------------------------------------------------------------------------
/** A port nobody listens on right now (the kernel picks it; closed before use). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Runs redis-cli with the given arguments; resolves with its stdout (last newline trimmed). */
export function redisCli(args, { timeoutMs = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI, args.map(String), { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\nredis-cli ${args.join(' ')}\nstdout: ${stdout}\nstderr: ${stderr}`;
        reject(err);
      } else {
        resolve(stdout.replace(/\r?\n$/, ''));
      }
    });
  });
}

/** Resolves true if something accepts a TCP connection on 127.0.0.1:port, false if refused. */
export function portAcceptsConnections(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

// ---- one redis-server process ---------------------------------------------------------------
function spawnServer({ port, dir, args }) {
  const argv = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--save', '',
    '--appendonly', 'no',
    '--daemonize', 'no',
    '--dir', dir,
    '--logfile', '',
    '--loglevel', 'notice',
    ...args.map(String),
  ];
  const [cmd, cmdArgs] = SETPRIV
    ? [SETPRIV, ['--pdeathsig', 'SIGKILL', '--', REDIS_SERVER, ...argv]]
    : [REDIS_SERVER, argv];
  const child = spawn(cmd, cmdArgs, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const log = [];
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  const ready = new Promise((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => {
      reject(new Error(`redis-server on port ${port} not ready after ${READY_TIMEOUT_MS} ms\n${log.join('\n')}`));
    }, READY_TIMEOUT_MS);
    const onData = (chunk) => {
      buffered += chunk.toString('utf8');
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const lineText = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        log.push(lineText);
        if (log.length > 200) log.shift();
        if (lineText.includes('Ready to accept connections')) {
          clearTimeout(timer);
          resolve();
        }
      }
    };
    child.stdout.on('data', onData); // keeps draining the pipe after ready, too
    child.stderr.on('data', onData);
    child.once('error', (err) => { clearTimeout(timer); reject(err); });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`redis-server on port ${port} exited before ready (code ${code}, signal ${signal})\n${log.join('\n')}`));
    });
  });
  return { child, ready, exited, log };
}

async function stopChild(proc) {
  if (!proc) return;
  const { child, exited } = proc;
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    await exited;
    clearTimeout(timer);
  } else {
    await exited;
  }
}

/**
 * Starts a redis-server on a free loopback port.
 * @param {{ args?: string[], port?: number }} [options] extra redis-server arguments
 *   (e.g. `['--maxmemory', '10mb']`); `port` to pick one (default: a free one).
 */
export async function startRedis({ args = [], port: wantedPort } = {}) {
  installHooks();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'strata-redis-'));
  tempDirs.add(dir);
  let proc;
  let port = wantedPort;
  // A free port can be taken between our check and redis' bind: retry with another one.
  for (let attempt = 0; ; attempt++) {
    port = wantedPort ?? (await freePort());
    proc = spawnServer({ port, dir, args });
    try {
      await proc.ready;
      break;
    } catch (err) {
      await stopChild(proc);
      const busy = /Address already in use/i.test(proc.log.join('\n'));
      if (!busy || wantedPort !== undefined || attempt >= 4) {
        rmSync(dir, { recursive: true, force: true });
        tempDirs.delete(dir);
        throw err;
      }
    }
  }

  let stopped = false;
  const server = {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    get pid() { return proc.child.pid; },
    /** Recent lines of the server's log. */
    get log() { return proc.log.slice(); },
    /** `redis-cli -p PORT ...args`, resolves with stdout. */
    cli: (...cliArgs) => redisCli(['-p', port, ...cliArgs]),
    /** SIGTERM and wait for exit (SIGKILL after 5 s); the port then refuses connections. */
    async stop() {
      await stopChild(proc);
      if (!stopped) {
        stopped = true;
        rmSync(dir, { recursive: true, force: true });
        tempDirs.delete(dir);
      }
    },
    /** Stops the server and starts a fresh one (empty, same args) on the same port. */
    async restart() {
      await stopChild(proc);
      proc = spawnServer({ port, dir, args });
      await proc.ready;
    },
    /** SIGKILL, no grace (to simulate a crash); `restart()` brings it back. */
    async kill() {
      proc.child.kill('SIGKILL');
      await proc.exited;
    },
  };
  return server;
}

// ---- cluster --------------------------------------------------------------------------------
/**
 * Starts `masters` real cluster nodes (`--cluster-enabled yes`, own config file and dir each),
 * joins them with `redis-cli --cluster create … --cluster-replicas 0 --cluster-yes`, and waits until
 * every node reports `cluster_state:ok`.
 * @param {{ masters?: number, args?: string[] }} [options]
 */
export async function startCluster({ masters = 3, args = [] } = {}) {
  if (masters < 3) throw new Error('redis-cli --cluster create needs at least 3 masters');
  installHooks();
  const nodes = [];
  try {
    for (let i = 0; i < masters; i++) {
      // The cluster bus port defaults to port + 10000, which may be taken or out of range:
      // give it its own free port.
      const busPort = await freePort();
      nodes.push(await startRedis({
        args: [
          '--cluster-enabled', 'yes',
          '--cluster-config-file', 'nodes.conf',
          '--cluster-node-timeout', '5000',
          '--cluster-port', String(busPort),
          ...args,
        ],
      }));
    }
    await redisCli([
      '--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`),
      '--cluster-replicas', '0', '--cluster-yes',
    ]);
    // No event tells us the gossip has converged: poll `cluster info` on every node.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const infos = await Promise.all(nodes.map((n) => n.cli('CLUSTER', 'INFO')));
      if (infos.every((s) => /cluster_state:ok/.test(s) && /cluster_known_nodes:(\d+)/.exec(s)?.[1] === String(masters))) break;
      if (Date.now() > deadline) throw new Error(`cluster not ok after 20 s:\n${infos.join('\n---\n')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    await Promise.all(nodes.map((n) => n.stop()));
    throw err;
  }
  return {
    nodes,
    /** Seed URLs for a cluster client. */
    urls: nodes.map((n) => n.url),
    /** `redis-cli -c -p <first node> ...args` (follows MOVED/ASK redirects). */
    cli: (...cliArgs) => redisCli(['-c', '-p', nodes[0].port, ...cliArgs]),
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
    },
  };
}
