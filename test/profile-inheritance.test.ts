/**
 * A new version of a disk inherits the boot profile of the version it was deduplicated against
 * (src/cache/profile-inheritance.ts): `slipway push` of a rebuilt image under a new tag stores a
 * profile for it, and a host that has never seen the new version opens it with that profile.
 * Real files, a real OCI layout, the real CLI.
 */
import { closeSync, copyFileSync, openSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchBootProfile, profileTag, pushBootProfile, type BootProfile } from '../src/cache/boot-profile.js';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { pushDisk } from '../src/disk/push.js';
import { inheritBootProfile } from '../src/cache/profile-inheritance.js';
import { WorkerPool } from '../src/workers/pool.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { silentLogger } from '../src/util/log.js';
import { makeSparse, tempDir } from './helpers/images.js';
import { jsonOut, runCli } from './helpers/run-cli.js';

const work = tempDir();
const targets = new Targets();
const pool = new WorkerPool(1);
afterAll(async () => {
  await targets.close();
  await pool.close();
});
const KiB = 1024;
const CHUNK = 64 * KiB;

interface PushOut { digest: string; bootProfile?: { inheritedFrom: string; chunks: number; unchangedChunks: number } }

/** A 4 MiB image whose first 2 MiB (32 chunks of 64 KiB) are random, the rest a hole. */
function baseImage(name: string): string {
  return makeSparse(join(work, name), 4 << 20, [{ offset: 0, length: 2 << 20 }]);
}

/** `src` copied to `name` with `writes` applied (a buffer at a byte offset). */
function changed(src: string, name: string, writes: { offset: number; data: Buffer }[]): string {
  const path = join(work, name);
  copyFileSync(src, path);
  const fd = openSync(path, 'r+');
  try {
    for (const w of writes) writeSync(fd, w.data, 0, w.data.length, w.offset);
  } finally {
    closeSync(fd);
  }
  return path;
}

async function push(file: string, ref: string): Promise<PushOut> {
  return jsonOut<PushOut>(await runCli(['push', file, ref, '--chunk-size', '64K', '--progress=none']));
}

/** Store `chunks` as the boot profile of the disk at `ref` (as a first boot of it would). */
async function giveProfile(ref: string, chunks: number[]): Promise<void> {
  const parsed = parseRef(ref);
  const target = await targets.open(parsed);
  const disk = await openDiskArtifact(target, parsed.tag as string);
  await pushBootProfile(target, disk.manifestDescriptor, { formatVersion: 1, disk: disk.manifestDescriptor.digest, chunkSizeBytes: CHUNK, chunks });
}

async function storedProfile(ref: string, digest: string): Promise<BootProfile | undefined> {
  return (await fetchBootProfile(await targets.open(parseRef(ref)), digest)) as BootProfile | undefined;
}

describe('boot profiles inherited at push', () => {
  it('a rebuilt image under a new tag gets its parent\'s profile, less the chunks that became holes; a fresh host opens it with that profile', async () => {
    const layout = join(work, 'rebuilt');
    const v1img = baseImage('v1.img');
    const v1 = await push(v1img, `oci:${layout}:v1`);
    expect(v1.bootProfile).toBeUndefined();
    const parentChunks = [5, 3, 0, 20, 31, 7];
    await giveProfile(`oci:${layout}:v1`, parentChunks);

    // v2: one 4 KiB block of chunk 3 changed, chunk 31 zeroed (a hole now)
    const v2img = changed(v1img, 'v2.img', [{ offset: 3 * CHUNK + 8 * KiB, data: randomBytes(4 * KiB) }, { offset: 31 * CHUNK, data: Buffer.alloc(CHUNK) }]);
    const v2 = await push(v2img, `oci:${layout}:v2`);
    expect(v2.bootProfile).toEqual({ inheritedFrom: v1.digest, chunks: 5, unchangedChunks: 4 });
    const stored = await storedProfile(`oci:${layout}:v2`, v2.digest);
    expect(stored).toEqual({ formatVersion: 1, disk: v2.digest, chunkSizeBytes: CHUNK, chunks: [5, 3, 0, 20, 7], inheritedFrom: v1.digest });

    // a host that has never seen v2 opens it with the inherited profile and prefetches its chunks
    const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-cache-') }), logger: silentLogger, targets });
    try {
      const disk = await cache.openDisk(`oci:${layout}:v2`, { recordProfileIfMissing: true });
      expect(disk.openedWithProfile).toEqual({ chunks: 5, from: 'registry' });
      await disk.settle();
      expect(cache.stats().remote.chunks).toBe(5);
      await disk.close();
    } finally {
      await cache.close();
    }

    // the same image pushed again (same digest) keeps the profile it has
    const again = await push(v2img, `oci:${layout}:v2-again`);
    expect(again.digest).toBe(v2.digest);
    expect(again.bootProfile).toBeUndefined();
    expect((await storedProfile(`oci:${layout}:v2`, v2.digest))?.chunks).toEqual([5, 3, 0, 20, 7]);
  });

  it('an image laid out anew (fewer than half its parent profile\'s chunks unchanged) inherits nothing', async () => {
    const layout = join(work, 'anew');
    const v1img = baseImage('anew-v1.img');
    await push(v1img, `oci:${layout}:v1`);
    await giveProfile(`oci:${layout}:v1`, [0, 1, 2, 3]);
    // chunks 0-2 rewritten, chunk 3 kept: 1 of 4 unchanged; chunks 4+ keep dedup going
    const v2img = changed(v1img, 'anew-v2.img', [{ offset: 0, data: randomBytes(3 * CHUNK) }]);
    const v2 = await push(v2img, `oci:${layout}:v2`);
    expect(v2.bootProfile).toBeUndefined();
    expect(await storedProfile(`oci:${layout}:v2`, v2.digest)).toBeUndefined();
  });

  it('the parent is the candidate whose profile is most unchanged; malformed, duplicated and all-hole profiles are passed over', async () => {
    const layout = join(work, 'choose');
    const base = baseImage('choose-base.img');
    const tagged = async (tag: string, chunk: number | undefined): Promise<{ digest: string; ref: string }> => {
      const img = chunk === undefined ? base : changed(base, `choose-${tag}.img`, [{ offset: chunk * CHUNK, data: randomBytes(4 * KiB) }]);
      const ref = `oci:${layout}:${tag}`;
      return { digest: (await push(img, ref)).digest, ref };
    };
    const eight = [1, 2, 3, 4, 5, 6, 7, 8];
    const good = await tagged('a-good', undefined);
    await giveProfile(good.ref, eight);
    // 10 chunks, 6 unchanged in the new disk (chunks 9-12 rewritten there): 0.6 < good's 1.0
    const partial = await tagged('b-partial', 31);
    await giveProfile(partial.ref, [1, 2, 3, 4, 5, 6, 9, 10, 11, 12]);
    // one chunk a thousand times: one chunk, not a thousand
    const dup = await tagged('c-dup', 30);
    await giveProfile(dup.ref, new Array<number>(1000).fill(20));
    // holes in every disk here: nothing to inherit, and no reason to pass the good one over
    const holes = await tagged('d-holes', 29);
    await giveProfile(holes.ref, Array.from({ length: 24 }, (_, i) => 40 + i));
    // more unchanged chunks than the good one, and one outside the disk: refused as a whole
    const bad = await tagged('e-bad', 28);
    await giveProfile(bad.ref, [...eight, 13, 14, 15, 9999]);
    // a profile manifest that is JSON null
    const nul = await tagged('f-null', 27);
    const target = await targets.open(parseRef(nul.ref));
    await target.pushManifest(Buffer.from('null'), 'application/vnd.oci.image.manifest.v1+json', profileTag(nul.digest));

    const img = changed(base, 'choose-new.img', [9, 10, 11, 12].map((n) => ({ offset: n * CHUNK, data: randomBytes(4 * KiB) })));
    const pushed = await push(img, `oci:${layout}:z-new`);
    expect(pushed.bootProfile).toEqual({ inheritedFrom: good.digest, chunks: 8, unchangedChunks: 8 });
    expect((await storedProfile(`oci:${layout}:z-new`, pushed.digest))?.chunks).toEqual(eight);
  });

  it('profile tags do not crowd disks out of the tags a push looks at', async () => {
    const layout = join(work, 'crowded');
    const img = baseImage('crowded-1.img');
    await push(img, `oci:${layout}:build-1`);
    await giveProfile(`oci:${layout}:build-1`, [1, 2]);
    // 40 more profiles (of other disks' digests), whose sha256-... tags sort before build-N
    const target = await targets.open(parseRef(`oci:${layout}:build-1`));
    const v1 = await openDiskArtifact(target, 'build-1');
    for (let i = 0; i < 40; i++) {
      const subject = { ...v1.manifestDescriptor, digest: `sha256:${randomBytes(32).toString('hex')}` };
      await pushBootProfile(target, subject, { formatVersion: 1, disk: subject.digest, chunkSizeBytes: CHUNK, chunks: [1] });
    }
    const next = await push(changed(img, 'crowded-2.img', [{ offset: 5 * CHUNK, data: randomBytes(4 * KiB) }]), `oci:${layout}:build-2`);
    expect(next.bootProfile).toEqual({ inheritedFrom: v1.manifestDescriptor.digest, chunks: 2, unchangedChunks: 2 });
  });

  it('a snapshot (a delta of its base) inherits its base\'s profile', async () => {
    const layout = join(work, 'delta');
    const img = baseImage('delta-base.img');
    await push(img, `oci:${layout}:base`);
    await giveProfile(`oci:${layout}:base`, [2, 1]);
    const target = await targets.open(parseRef(`oci:${layout}:base`));
    const base = await openDiskArtifact(target, 'base');
    // the staging file a snapshot pushes: the base's size, only the dirty chunk (2) written
    const staging = makeSparse(join(work, 'delta-staging'), 4 << 20, [{ offset: 2 * CHUNK, length: CHUNK }]);
    const snap = await pushDisk({ file: staging, target, tag: 's1', pool, base, changed: (n) => n === 2, chunkSizeBytes: CHUNK });
    expect(snap.dedupedAgainst[0]?.manifestDescriptor.digest).toBe(base.manifestDescriptor.digest);
    const inherited = await inheritBootProfile(target, snap, snap.dedupedAgainst);
    expect(inherited).toMatchObject({ from: base.manifestDescriptor.digest, chunks: 2, unchangedChunks: 1 });
    expect((await storedProfile(`oci:${layout}:s1`, snap.manifest.digest))?.chunks).toEqual([2, 1]);
  });

  it('slipway copy takes a disk\'s boot profile along; a disk without one copies without one', async () => {
    const from = join(work, 'copy-from');
    const img = baseImage('copy.img');
    const pushed = await push(img, `oci:${from}:v1`);
    await giveProfile(`oci:${from}:v1`, [4, 2]);
    const to = join(work, 'copy-to');
    const copied = jsonOut<{ digest: string; bootProfile: boolean }>(await runCli(['copy', `oci:${from}:v1`, `oci:${to}:v1`, '--progress=none']));
    expect(copied).toMatchObject({ digest: pushed.digest, bootProfile: true });
    expect((await storedProfile(`oci:${to}:v1`, pushed.digest))?.chunks).toEqual([4, 2]);
    const bare = baseImage('copy-bare.img');
    const bareDigest = (await push(bare, `oci:${from}:bare`)).digest;
    const copiedBare = jsonOut<{ bootProfile: boolean }>(await runCli(['copy', `oci:${from}:bare`, `oci:${to}:bare`, '--progress=none']));
    expect(copiedBare.bootProfile).toBe(false);
    expect(await storedProfile(`oci:${to}:bare`, bareDigest)).toBeUndefined();
  });
});
