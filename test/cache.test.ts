/**
 * The chunk cache against a real registry and a real layout: lazy reads return the disk's bytes
 * and fetch only what they touch; one fetch per chunk however many readers; adjacent chunks in
 * one request; tier 1 survives a restart; mirrors come before the origin (a real docker-registry
 * pull-through cache); boot profiles are stored beside the disk and fetched ahead of demand.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { HOLE } from '../src/disk/format.js';
import { pushDisk } from '../src/disk/push.js';
import { RegistryClient } from '../src/oci/registry/transport.js';
import { parseRef } from '../src/oci/ref.js';
import { silentLogger } from '../src/util/log.js';
import { registryBed } from './helpers/registry-bed.js';
import { startRegistry } from './helpers/registry.js';
import { makeExt4, tempDir } from './helpers/images.js';

const CHUNK = 64 << 10;
const bed = registryBed();
const { targets } = bed;
const work = tempDir();
let image: Buffer;
let imgPath: string;
const ref = () => `${bed.registry.host}/cache/disk:v1`;

async function newCache(dir = tempDir('slipway-cache-'), extra: Partial<ReturnType<typeof loadConfig>> = {}): Promise<ChunkCache> {
  return ChunkCache.open({ config: loadConfig({}, { cacheDir: dir, ...extra }), logger: silentLogger, pool: bed.pool, targets });
}

beforeAll(async () => {
  imgPath = makeExt4(join(work, 'disk.img'), 16, join(process.cwd(), 'node_modules', 'undici'));
  image = readFileSync(imgPath);
  await pushDisk({ file: imgPath, target: await targets.open(parseRef(ref())), tag: 'v1', pool: bed.pool, chunkSizeBytes: CHUNK, packSizeBytes: 1 << 20 });
  execFileSync('true');
});

describe('lazy disk reads', () => {
  it('return the disk\'s bytes at any offset, fetching only the chunks they touch', async () => {
    const cache = await newCache();
    const disk = await cache.openDisk(ref());
    expect(disk.sizeBytes).toBe(image.length);
    const one = await disk.read(CHUNK * 3 + 100, 4096);
    expect(one.equals(image.subarray(CHUNK * 3 + 100, CHUNK * 3 + 100 + 4096))).toBe(true);
    const fetched = cache.stats().remote.chunks;
    expect(fetched).toBeLessThanOrEqual(1);
    for (let i = 0; i < 40; i++) {
      const off = Math.floor(Math.random() * (image.length - 70_000));
      const len = 1 + Math.floor(Math.random() * 70_000);
      expect((await disk.read(off, len)).equals(image.subarray(off, off + len))).toBe(true);
    }
    expect((await disk.read(0, image.length)).equals(image)).toBe(true);
    await expect(disk.read(image.length - 10, 11)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await cache.close();
  });

  it('16 concurrent readers of a cold disk fetch each chunk once', async () => {
    const cache = await newCache();
    const disk = await cache.openDisk(ref());
    const results = await Promise.all(Array.from({ length: 16 }, () => disk.read(0, image.length)));
    expect(results.every((r) => r.equals(image))).toBe(true);
    const stored = disk.artifact.index.entries.reduce((s, e) => s + e.storedLength, 0);
    expect(cache.stats().remote.chunks).toBe(disk.artifact.index.entries.length);
    expect(cache.stats().remote.bytes).toBeLessThanOrEqual(stored + 15 * (64 << 10)); // coalescing gaps only
    expect(disk.stats.inflightJoins).toBeGreaterThan(0);
    await cache.close();
  });

  it('coalesces adjacent wanted chunks of a pack into one request', async () => {
    const cache = await newCache();
    const disk = await cache.openDisk(ref());
    const { index } = disk.artifact;
    // find 6 consecutive non-hole chunks in one pack
    let start = -1;
    for (let n = 0; n + 6 <= index.chunkCount && start < 0; n++) {
      const es = Array.from({ length: 6 }, (_, i) => index.map[n + i] as number);
      if (es.every((e) => e !== HOLE) && new Set(es.map((e) => index.entries[e]?.pack)).size === 1 && new Set(es).size === 6) start = n;
    }
    expect(start).toBeGreaterThanOrEqual(0);
    await disk.read(start * CHUNK, 6 * CHUNK);
    expect(cache.stats().remote.requests).toBe(1);
    expect(cache.stats().remote.chunks).toBe(6);
    await cache.close();
  });

  it('tier 1 survives a restart: a second process-lifetime reads without the registry', async () => {
    const dir = tempDir('slipway-cache-');
    const first = await newCache(dir);
    await (await first.openDisk(ref())).read(0, image.length);
    await first.close();
    const second = await newCache(dir);
    const disk = await second.openDisk(ref());
    expect((await disk.read(0, image.length)).equals(image)).toBe(true);
    expect(second.stats().remote.requests).toBe(0);
    expect(disk.stats.tier1Chunks).toBeGreaterThan(0);
    const again = await disk.read(0, image.length);
    expect(again.equals(image)).toBe(true);
    expect(disk.stats.tier0Chunks).toBeGreaterThan(0);
    await second.close();
  });

  it('prefetch fills tier 1 with the whole disk; reads then stay local', async () => {
    const cache = await newCache();
    const disk = await cache.openDisk(ref(), { useProfile: false });
    const events: number[] = [];
    const result = await disk.prefetch({ onProgress: (e) => events.push(e.doneBytes) });
    expect(result.chunks).toBe(disk.artifact.index.entries.length);
    expect(events.length).toBeGreaterThan(1);
    const before = cache.stats().remote.requests;
    expect((await disk.read(0, image.length)).equals(image)).toBe(true);
    expect(cache.stats().remote.requests).toBe(before);
    await cache.close();
  });

  it('works the same on an OCI layout origin', async () => {
    const layout = `oci:${join(work, 'layout')}:v1`;
    await pushDisk({ file: imgPath, target: await targets.open(parseRef(layout), { createLayout: true }), tag: 'v1', pool: bed.pool, chunkSizeBytes: CHUNK });
    const cache = await newCache();
    const disk = await cache.openDisk(layout);
    expect((await disk.read(12345, 300_000)).equals(image.subarray(12345, 312345))).toBe(true);
    await cache.close();
  });
});

describe('mirrors', () => {
  it('a pull-through registry mirror serves the chunks before the origin (and its ignored Ranges are handled)', async () => {
    const mirror = await startRegistry({ proxyRemoteUrl: `http://${bed.registry.host}` });
    try {
      const cache = await newCache(tempDir('slipway-cache-'), { mirrors: { [bed.registry.host]: [mirror.host] } });
      const disk = await cache.openDisk(ref(), { useProfile: false });
      expect(disk.sources.map((s) => s.host)).toEqual([mirror.host, bed.registry.host]);
      expect((await disk.read(0, image.length)).equals(image)).toBe(true);
      await disk.settle();
      // the mirror fetched the packs from the origin and stored them: it served them
      const packs = disk.artifact.index.packs.map((p) => p.digest.slice(7));
      const stored = execFileSync('find', [mirror.storageDir, '-name', 'data', '-path', '*blobs*'], { encoding: 'utf8' });
      for (const hex of packs) expect(stored).toContain(hex);
      await cache.close();
    } finally {
      await mirror.stop();
    }
  });
});

describe('boot profiles', () => {
  it('records the first-read order, stores it beside the disk, and prefetches it on a cold open', async () => {
    const cache = await newCache();
    const disk = await cache.openDisk(ref(), { recordProfile: true });
    const { index } = disk.artifact;
    const order = [...index.map.keys()].filter((n) => index.map[n] !== HOLE).reverse().slice(0, 12);
    for (const n of order) await disk.read(n * CHUNK, 512);
    expect(disk.profile()).toEqual(order);
    const saved = await disk.saveProfile();
    expect(saved?.where === 'registry' && saved.descriptor.digest).toMatch(/^sha256:/);
    await cache.close();

    const cold = await newCache();
    const again = await cold.openDisk(ref());
    expect(again.stats.profileChunks).toBe(order.length);
    await again.settle();
    for (const n of order) expect(cold.has((index.entries[index.map[n] as number]?.digest as Buffer).toString('hex'))).toBe(true);
    const requestsAfterPrefetch = cold.stats().remote.requests;
    for (const n of order) await again.read(n * CHUNK, 512);
    expect(cold.stats().remote.requests).toBe(requestsAfterPrefetch);
    await cold.close();
  });
});

describe('plain HTTP registries', () => {
  it('plainHttpRegistries (and SLIPWAY_PLAIN_HTTP_REGISTRIES) make those hosts plain HTTP, others keep TLS', () => {
    const config = loadConfig({ SLIPWAY_PLAIN_HTTP_REGISTRIES: 'mirror.rack-a:5000, mirror.rack-b:5000', HOME: '/nonexistent' }, { cacheDir: tempDir('slipway-plain-') });
    expect(config.plainHttpRegistries).toEqual(['mirror.rack-a:5000', 'mirror.rack-b:5000']);
    const opts = { plainHttpHosts: config.plainHttpRegistries };
    expect(new RegistryClient('mirror.rack-a:5000', opts).origin).toBe('http://mirror.rack-a:5000');
    expect(new RegistryClient('registry.example.com', opts).origin).toBe('https://registry.example.com');
    expect(new RegistryClient('mirror.rack-a:5001', opts).origin).toBe('https://mirror.rack-a:5001');
    expect(new RegistryClient('127.0.0.1:5000', {}).origin).toBe('http://127.0.0.1:5000');
  });
});
