/**
 * The metadata cache's budget (src/cache/metadata-cache.ts) against a real registry: what disks'
 * opens keep in `<cacheDir>/meta` stays under `metadataBudgetBytes`, the least recently used
 * blobs go first (a read marks a blob used), a disk whose metadata went opens again (fetched
 * anew), `cache gc` trims it to its low watermark, and a directory over its budget is brought under
 * it when a cache opens on it.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { pushDisk } from '../src/disk/push.js';
import { parseRef } from '../src/oci/ref.js';
import { silentLogger } from '../src/util/log.js';
import { registryBed } from './helpers/registry-bed.js';
import { tempDir } from './helpers/images.js';

const bed = registryBed();
const work = tempDir('slipway-metacache-');
const DISKS = 4;
const images: Buffer[] = [];
const refOf = (i: number): string => `${bed.registry.host}/meta/d${i}:v1`;

async function openCache(dir: string, metadataBudgetBytes?: number): Promise<ChunkCache> {
  return ChunkCache.open({ config: loadConfig({}, { cacheDir: dir, ...(metadataBudgetBytes ? { metadataBudgetBytes } : {}) }), logger: silentLogger, pool: bed.pool, targets: bed.targets });
}

/** The blobs in a cache directory's metadata cache, by hex digest, with their sizes (the directory as it is). */
function blobsIn(cacheDir: string): Map<string, number> {
  const dir = join(cacheDir, 'meta', 'blobs', 'sha256');
  return new Map(readdirSync(dir).filter((n) => /^[0-9a-f]{64}$/.test(n)).map((n) => [n, statSync(join(dir, n)).size]));
}

const bytesOf = (blobs: Map<string, number>): number => [...blobs.values()].reduce((a, b) => a + b, 0);

/** Open disk `i` and read all of it (checked), returning its manifest's hex digest. */
async function openAndRead(cache: ChunkCache, i: number, ref = refOf(i)): Promise<string> {
  const disk = await cache.openDisk(ref, { useProfile: false });
  try {
    expect((await disk.read(0, disk.sizeBytes)).equals(images[i] as Buffer)).toBe(true);
    return disk.digest.slice('sha256:'.length);
  } finally {
    await disk.close();
  }
}

beforeAll(async () => {
  for (let i = 0; i < DISKS; i++) {
    const image = randomBytes(1 << 20);
    const file = join(work, `d${i}.img`);
    writeFileSync(file, image);
    images.push(image);
    await pushDisk({ file, target: await bed.targets.open(parseRef(refOf(i))), tag: 'v1', pool: bed.pool, chunkSizeBytes: 64 << 10, packSizeBytes: 256 << 10 });
  }
});

describe('the metadata cache', () => {
  it('stays under its budget, evicting the least recently used first; a disk whose metadata went opens again', async () => {
    // what one disk's open keeps (each disk about alike: the same size and chunk count)
    const probeDir = tempDir('slipway-metacache-probe-');
    const probe = await openCache(probeDir);
    await openAndRead(probe, 0);
    await probe.close();
    const perDisk = bytesOf(blobsIn(probeDir));
    expect(perDisk).toBeGreaterThan(0);

    const dir = tempDir('slipway-metacache-');
    // room for two disks' metadata and a half: the third's eviction (to 0.8 of it) leaves two
    const budget = Math.floor(perDisk * 2.6);
    const cache = await openCache(dir, budget);
    try {
      const d0 = await openAndRead(cache, 0);
      const d1 = await openAndRead(cache, 1);
      // (disks' metadata differ by a few bytes: their packs' sizes are numbers in JSON)
      expect(Math.abs(bytesOf(blobsIn(dir)) - 2 * perDisk)).toBeLessThan(64);
      // d0 used again (by tag: its manifest fetched, found kept) after d1 was kept
      await openAndRead(cache, 0);
      const d2 = await openAndRead(cache, 2);
      const held = blobsIn(dir);
      expect(bytesOf(held)).toBeLessThanOrEqual(budget);
      expect({ d0: held.has(d0), d1: held.has(d1), d2: held.has(d2) }).toEqual({ d0: true, d1: false, d2: true });
      expect(cache.stats().metadata).toEqual({ blobs: held.size, bytes: bytesOf(held), budgetBytes: budget });
      // d1's metadata went: it is fetched again, and the disk reads as before (d0's goes now)
      expect(await openAndRead(cache, 1)).toBe(d1);
      expect([d0, d1, d2].map((d) => blobsIn(dir).has(d))).toEqual([false, true, true]);
      // d2 used again by digest (its manifest read from the cache), then d0: d1 goes
      await openAndRead(cache, 2, `${bed.registry.host}/meta/d2@sha256:${d2}`);
      await openAndRead(cache, 0);
      expect([d0, d1, d2].map((d) => blobsIn(dir).has(d))).toEqual([true, false, true]);
      expect(bytesOf(blobsIn(dir))).toBeLessThanOrEqual(budget);
    } finally {
      await cache.close();
    }
  });

  it('cache gc trims it to the low watermark of its budget, least recently used first', async () => {
    const dir = tempDir('slipway-metacache-');
    const wide = await openCache(dir);
    const digests: string[] = [];
    for (let i = 0; i < DISKS; i++) digests.push(await openAndRead(wide, i));
    await wide.close();
    const before = blobsIn(dir);
    expect([...before.keys()].sort()).toEqual([...digests].sort());
    // room for all four (no eviction when it opens), a low watermark (0.8) for three
    const budget = Math.floor(bytesOf(before) / DISKS * 4.2);
    const cache = await openCache(dir, budget);
    try {
      expect(blobsIn(dir).size).toBe(DISKS);
      const gc = cache.gc();
      const after = blobsIn(dir);
      expect(bytesOf(after)).toBeLessThanOrEqual(Math.floor(budget * 0.8));
      expect({ blobs: gc.evictedMetadataBlobs, bytes: gc.evictedMetadataBytes }).toEqual({ blobs: 1, bytes: bytesOf(before) - bytesOf(after) });
      expect(after.has(digests[0] as string)).toBe(false);
      expect(cache.stats().metadata.bytes).toBe(bytesOf(after));
    } finally {
      await cache.close();
    }
  });

  it('a directory over its budget (a smaller budget set since) is brought under it when a cache opens on it', async () => {
    const dir = tempDir('slipway-metacache-');
    const wide = await openCache(dir);
    for (let i = 0; i < DISKS; i++) await openAndRead(wide, i);
    await wide.close();
    const total = bytesOf(blobsIn(dir));
    const budget = Math.floor(total / 3);
    const narrow = await openCache(dir, budget);
    try {
      expect(bytesOf(blobsIn(dir))).toBeLessThanOrEqual(Math.floor(budget * 0.8));
      expect(narrow.stats().metadata.bytes).toBe(bytesOf(blobsIn(dir)));
      // the disk opened last is the one kept
      expect(await openAndRead(narrow, DISKS - 1)).toMatch(/^[0-9a-f]{64}$/);
      expect(narrow.stats().remote.requests).toBe(0);
    } finally {
      await narrow.close();
    }
  });
});
