// Proves the redis-server test helper against real servers (no mocks).
import { describe, it, expect, afterAll } from 'vitest';
import { startRedis, startCluster, portAcceptsConnections, redisCli } from './helpers/redis-server.mjs';

const started = [];
afterAll(async () => {
  await Promise.all(started.map((s) => s.stop()));
});

describe('startRedis', () => {
  it('starts a server, answers PING and SET/GET, and stop() frees the port', async () => {
    const redis = await startRedis();
    started.push(redis);
    expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
    expect(await redis.cli('PING')).toBe('PONG');
    expect(await redis.cli('SET', 'greeting', 'hello world')).toBe('OK');
    expect(await redis.cli('GET', 'greeting')).toBe('hello world');
    // The conditions the helper promises.
    expect(await redis.cli('CONFIG', 'GET', 'save')).toBe('save\n');
    expect(await redis.cli('CONFIG', 'GET', 'appendonly')).toBe('appendonly\nno');
    expect(await redis.cli('CONFIG', 'GET', 'bind')).toBe('bind\n127.0.0.1');

    await redis.stop();
    expect(await portAcceptsConnections(redis.port)).toBe(false);
    await expect(redisCli(['-p', redis.port, 'PING'])).rejects.toThrow();
    await redis.stop(); // idempotent
  });

  it('passes extra args and restart() comes back empty on the same port', async () => {
    const redis = await startRedis({ args: ['--maxmemory', '10mb'] });
    started.push(redis);
    expect(await redis.cli('CONFIG', 'GET', 'maxmemory')).toBe(`maxmemory\n${10 * 1024 * 1024}`);
    await redis.cli('SET', 'k', 'v');
    const pid = redis.pid;
    await redis.restart();
    expect(redis.pid).not.toBe(pid);
    expect(await redis.cli('PING')).toBe('PONG');
    expect(await redis.cli('EXISTS', 'k')).toBe('0');
    await redis.stop();
    expect(await portAcceptsConnections(redis.port)).toBe(false);
  });
});

describe('startCluster', () => {
  it('forms a 3-master cluster; a key set on its owner is readable through redirects', async () => {
    const cluster = await startCluster({ masters: 3 });
    started.push(cluster);
    expect(cluster.nodes).toHaveLength(3);
    for (const n of cluster.nodes) {
      const info = await n.cli('CLUSTER', 'INFO');
      expect(info).toMatch(/cluster_state:ok/);
      expect(info).toMatch(/cluster_slots_assigned:16384/);
      expect(n.url).toBe(`redis://127.0.0.1:${n.port}`);
    }

    // Which node owns the key's slot? (CLUSTER SLOTS: start, end, [ip, port, id] per range.)
    const key = 'strata:helper:{probe}';
    const slot = Number(await cluster.nodes[0].cli('CLUSTER', 'KEYSLOT', key));
    const slotsOut = (await cluster.nodes[0].cli('CLUSTER', 'SLOTS')).split('\n');
    let ownerPort;
    for (let i = 0; i + 4 < slotsOut.length; ) {
      const start = Number(slotsOut[i]);
      const end = Number(slotsOut[i + 1]);
      const port = Number(slotsOut[i + 3]);
      if (slot >= start && slot <= end) ownerPort = port;
      i += 5; // start, end, ip, port, id (no replicas here)
      while (i < slotsOut.length && !/^\d+$/.test(slotsOut[i])) i++; // tolerate extra fields (hostname, …)
    }
    const owner = cluster.nodes.find((n) => n.port === ownerPort);
    const other = cluster.nodes.find((n) => n.port !== ownerPort);
    expect(owner).toBeDefined();

    expect(await owner.cli('SET', key, 'via-owner')).toBe('OK');
    // Without -c the other node answers MOVED; with -c redis-cli follows it.
    expect(await other.cli('GET', key)).toMatch(/MOVED/);
    expect(await other.cli('-c', 'GET', key)).toBe('via-owner');
    expect(await cluster.cli('GET', key)).toBe('via-owner');

    await cluster.stop();
    for (const n of cluster.nodes) expect(await portAcceptsConnections(n.port)).toBe(false);
  }, 60_000);
});
