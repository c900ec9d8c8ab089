/**
 * `ChunkCache.recentManifest`: a tag this cache resolved at or after a given time is answered from
 * the cache's metadata store (a restore that just tried a memory snapshot's tag as a disk does not
 * ask the registry for it again); one resolved before that time, or never, is not. Against the
 * real docker-registry.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pushDisk } from '../src/disk/push.js';
import { parseRef } from '../src/oci/ref.js';
import { chunkCacheBed } from './helpers/cache-bed.js';

const CHUNK = 64 * 1024;
const bed = chunkCacheBed('slipway-recent-manifest-');
const { targets, work, freshDir, openCache } = bed;
let ref: string;
let digest: string;

beforeAll(async () => {
  const file = join(work, 'disk.img');
  writeFileSync(file, randomBytes(4 * CHUNK));
  ref = `${bed.registry.host}/recent/disk:v1`;
  const pushed = await pushDisk({ file, target: await targets.open(parseRef(ref)), tag: 'v1', pool: bed.pool, chunkSizeBytes: CHUNK, packSizeBytes: 4 * CHUNK });
  digest = pushed.manifest.digest;
});

describe('a tag just resolved', () => {
  it('is answered from the metadata store from the time it was resolved on, and not before it or for another tag', async () => {
    const { cache } = await openCache({ cacheDir: freshDir() });
    const before = Date.now();
    expect(await cache.recentManifest(ref, before)).toBeUndefined();
    const disk = await cache.openDisk(ref);
    await disk.close();
    const got = await cache.recentManifest(ref, before);
    expect(got?.descriptor.digest).toBe(digest);
    expect(JSON.parse((got?.body ?? Buffer.alloc(0)).toString('utf8'))).toMatchObject({ artifactType: expect.any(String) });
    expect(await cache.recentManifest(ref, Date.now() + 60_000)).toBeUndefined();
    expect(await cache.recentManifest(`${bed.registry.host}/recent/disk:v2`, before)).toBeUndefined();
  });
});
