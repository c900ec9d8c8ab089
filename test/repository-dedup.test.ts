/**
 * Dedup across a repository (issue 13): a new version pushed under a new tag stores only what
 * changed, measured as bytes of the registry's own storage directory; pulls and lazy reads of
 * it touch only the packs they need (counted at a forwarding proxy); `--dedup-from` another
 * repository never makes a manifest name a blob its repository lacks.
 */
import { describe, expect, it } from 'vitest';
import { copyFileSync, openSync, readdirSync, statSync, writeSync, closeSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { newestTagsFirst } from '../src/disk/dedup.js';
import { HOLE } from '../src/disk/format.js';
import { pullDisk } from '../src/disk/pull.js';
import { pushDisk } from '../src/disk/push.js';
import { parseRef } from '../src/oci/ref.js';
import { silentLogger } from '../src/util/log.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { registryBed } from './helpers/registry-bed.js';
import { makeExt4, makeSparse, sha256File, tempDir } from './helpers/images.js';

const bed = registryBed();
const { targets } = bed;
const work = tempDir();
const MiB = 1 << 20;

/** Bytes of every file under the registry's storage directory: blobs, links, everything. */
function storageBytes(dir: string): number {
  let sum = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) sum += statSync(join(e.parentPath, e.name)).size;
  }
  return sum;
}


describe('dedup across a repository', () => {
  it('one changed 4 KiB block of a 96 MiB ext4 image, pushed under a new tag, stores < 1.5 MiB; pull and lazy read touch only the packs they need', async () => {
    const v1img = makeExt4(join(work, 'v1.img'), 96, '/usr/lib/python3.11');
    const target = await targets.open(parseRef(`${bed.registry.host}/ci/disk:v1`));
    const first = await pushDisk({ file: v1img, target, tag: 'v1', pool: bed.pool });
    const v1 = await openDiskArtifact(target, 'v1');
    expect(v1.index.packs.length).toBeGreaterThan(1);
    // change one 4 KiB block inside a chunk that holds data, in the middle of the disk
    const chunk = v1.config.chunkSizeBytes;
    let n = Math.floor(v1.index.chunkCount / 2);
    while (v1.index.map[n] === HOLE) n++;
    const v2img = join(work, 'v2.img');
    copyFileSync(v1img, v2img);
    const fd = openSync(v2img, 'r+');
    writeSync(fd, randomBytes(4096), 0, 4096, n * chunk + 8192);
    closeSync(fd);

    const before = storageBytes(bed.registry.storageDir);
    const second = await pushDisk({ file: v2img, target, tag: 'v2', pool: bed.pool });
    const growth = storageBytes(bed.registry.storageDir) - before;
    console.log(`[repository-dedup] v1: ${first.uploadedBytes} bytes in ${first.uploadedPacks} packs; v2 (one 4 KiB block changed, new tag): registry storage grew ${growth} bytes, ${second.uploadedPacks} pack(s) of ${second.uploadedBytes} bytes uploaded, ${second.newChunks} new chunk(s)`);
    expect(second.newChunks).toBe(1);
    expect(second.uploadedPacks).toBe(1);
    expect(growth).toBeLessThan(1.5 * MiB);

    // pull v2 through a forwarding proxy that counts the blob GETs
    const proxy = await startFaultProxy({ target: bed.registry.host, mode: '500', passBlobPuts: Number.MAX_SAFE_INTEGER });
    try {
      const via = await targets.open(parseRef(`${proxy.host}/ci/disk:v2`));
      const v2 = await openDiskArtifact(via, 'v2');
      const packGets = () => proxy.requests.filter((r) => r.method === 'GET' && v2.index.packs.some((p) => r.path.endsWith(`/blobs/${p.digest}`)));
      const out = join(work, 'v2-out.img');
      const pulled = await pullDisk({ target: via, disk: v2, outFile: out, pool: bed.pool });
      expect(sha256File(out)).toBe(sha256File(v2img));
      const pullPacks = new Set(packGets().map((r) => r.path)).size;
      const usedPacks = new Set(v2.index.entries.map((e) => e.pack)).size;
      expect(pullPacks).toBe(usedPacks);
      console.log(`[repository-dedup] pull of v2: ${pullPacks} of ${v2.index.packs.length} packs (v1 had ${v1.index.packs.length}), ${pulled.fetchedBytes} bytes, ${packGets().length} pack GETs`);

      // a lazy read of the changed block: one Range GET on the one pack holding it
      const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-cache-') }), logger: silentLogger, pool: bed.pool, targets });
      try {
        const lazy = await cache.openDisk(`${proxy.host}/ci/disk:v2`);
        const gets = packGets().length;
        const got = await lazy.read(n * chunk + 8192, 4096);
        expect(got.equals(readFileSync(v2img).subarray(n * chunk + 8192, n * chunk + 8192 + 4096))).toBe(true);
        const lazyGets = packGets().slice(gets);
        expect(lazyGets.length).toBe(1);
        console.log(`[repository-dedup] lazy 4 KiB read of the changed block: ${lazyGets.length} pack GET, ${cache.stats().remote.chunks} chunk(s) fetched`);
      } finally {
        await cache.close();
      }
    } finally {
      await proxy.stop();
    }
  }, 120_000);

  it('a --dedup-from disk in another repository lends only chunks whose pack the target repository holds', async () => {
    const img = makeSparse(join(work, 'other.img'), 4 * MiB, [{ offset: 0, length: 2 * MiB }]);
    const a = await targets.open(parseRef(`${bed.registry.host}/other/a:v1`));
    await pushDisk({ file: img, target: a, tag: 'v1', pool: bed.pool, chunkSizeBytes: 64 << 10, packSizeBytes: 512 << 10 });
    const fromA = await openDiskArtifact(a, 'v1');
    const b = await targets.open(parseRef(`${bed.registry.host}/other/b:v1`));
    const pushed = await pushDisk({ file: img, target: b, tag: 'v1', pool: bed.pool, chunkSizeBytes: 64 << 10, packSizeBytes: 512 << 10, dedupFrom: [fromA] });
    expect(pushed.reusedChunks).toBe(0);
    const out = join(work, 'other-out.img');
    await pullDisk({ target: b, disk: await openDiskArtifact(b, 'v1'), outFile: out, pool: bed.pool });
    expect(sha256File(out)).toBe(sha256File(img));
  });

  it('orders tags newest-looking first: numbers as numbers', () => {
    expect(newestTagsFirst(['v9', 'v10', 'v1', 'build-99', 'build-120', '2026-11-29', '2026-11-30'])).toEqual(['v10', 'v9', 'v1', 'build-120', 'build-99', '2026-11-30', '2026-11-29']);
  });

  it('a push to a repository of unrelated tags dedups against the disks there and still pulls back', async () => {
    const target = await targets.open(parseRef(`${bed.registry.host}/mixed/disk:a`));
    const base = makeSparse(join(work, 'mixed.img'), 2 * MiB, [{ offset: 0, length: MiB }]);
    await pushDisk({ file: base, target, tag: 'a', pool: bed.pool, chunkSizeBytes: 64 << 10 });
    // a non-disk manifest under another tag is passed over
    const cfg = Buffer.from('{}');
    const { sha256Digest } = await import('../src/oci/digest.js');
    const cfgDesc = { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256Digest(cfg), size: cfg.length };
    await target.pushBlob(cfgDesc, cfg);
    await target.pushManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: cfgDesc, layers: [] })), 'application/vnd.oci.image.manifest.v1+json', 'zz-not-a-disk');
    const changed = join(work, 'mixed2.img');
    copyFileSync(base, changed);
    const fd = openSync(changed, 'r+');
    writeSync(fd, randomBytes(100), 0, 100, 5);
    closeSync(fd);
    const pushed = await pushDisk({ file: changed, target, tag: 'b', pool: bed.pool, chunkSizeBytes: 64 << 10 });
    expect(pushed.newChunks).toBe(1);
    expect(pushed.reusedChunks).toBe(15);
    const out = join(work, 'mixed-out.img');
    await pullDisk({ target, disk: await openDiskArtifact(target, 'b'), outFile: out, pool: bed.pool });
    expect(sha256File(out)).toBe(sha256File(changed));
  });
});
