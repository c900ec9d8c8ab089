/**
 * Disk snapshots without VMs (src/disk/snapshot.ts and pushDisk's `changed` delta mode), against a
 * real docker-registry and real files:
 *
 * - readDirtyBitmap: a hand-written `SLWYDRT1` bitmap (docs/vhost-user-blk.md, "The overlay") reads
 *   back as the chunks it names; a missing file is "nothing dirty"; every malformed file (magic,
 *   version, chunk size, disk size, chunk count, bitmap length, a bit past the last chunk, a
 *   truncated header) is refused with OVERLAY_INVALID and a message naming the file and the problem.
 * - stageDirtyChunks copies exactly the dirty chunks of an overlay's `data` (a short last chunk, a
 *   sparse tail read as zeros) into a sparse staging file; clean chunks stay zero there.
 * - A snapshot end to end: a 48-chunk base image (data, holes, a duplicated chunk, a short last
 *   chunk) pushed with pushDisk; an overlay that changes a few chunks (new data, a hole filled, a
 *   chunk zeroed, a chunk rewritten with its old bytes, the last chunk) staged and pushed with
 *   pushSnapshot into the base's repository and into another one (the base's blobs mounted there).
 *   Pulled back byte for byte; `subject` and `config.base` name the base; only the new chunks are
 *   uploaded; every other chunk is the base's entry, in the base's pack, at the base's offset.
 * - A snapshot of a snapshot (base = s1), also pushed into a fresh repository.
 * - A snapshot that wrote nothing uploads no pack and is the base's disk.
 * - A failed snapshot push leaves the tag as it was: a staging file of the wrong size (refused
 *   with INVALID_ARGUMENT before anything is tagged), blob uploads failing (test/helpers/fault-proxy.ts)
 *   and the manifest PUT failing (a small proxy below).
 *
 * The tests of one describe block build on each other (s1 is pushed by the end-to-end test and used
 * as the base of s2 and as the tag the failure tests must leave alone), so they run in file order.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { openDiskArtifact, type DiskArtifact } from '../src/disk/artifact.js';
import { HOLE, type IndexEntry } from '../src/disk/format.js';
import { pullDisk } from '../src/disk/pull.js';
import { pushDisk } from '../src/disk/push.js';
import { pushSnapshot, readDirtyBitmap, seedChunks, stageDirtyChunks, DIRTY_MAGIC } from '../src/disk/snapshot.js';
import { SlipwayError } from '../src/errors.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import type { Target } from '../src/oci/store.js';
import { WorkerPool } from '../src/workers/pool.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { manifestDigest } from './helpers/oci-http.js';
import { type TestRegistry } from './helpers/registry.js';
import { registryBed } from './helpers/registry-bed.js';
import { sha256File, tempDir } from './helpers/images.js';

const work = tempDir('slipway-snapshot-');
// the registry, worker pool and targets (started before this file's hooks, stopped after them)
const bed = registryBed();
const targets = bed.targets;
let registry: TestRegistry;
let pool: WorkerPool;

beforeAll(() => {
  registry = bed.registry;
  pool = bed.pool;
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// helpers

interface Geometry {
  sizeBytes: number;
  chunkSizeBytes: number;
  chunkCount: number;
}

/**
 * A dirty bitmap written by hand, as slipway-blk writes it: magic, u32 version, u32 log2(chunk
 * size), u64 disk size, u64 chunk count (32-byte header), then ceil(count/8) bytes, bit n%8 of
 * byte n/8 for chunk n; all little-endian. `o` bends one field at a time for the malformed cases.
 */
function dirtyBitmap(g: Geometry, chunks: number[], o: { magic?: string; version?: number; shift?: number; sizeBytes?: number; chunkCount?: number; bitmapBytes?: number } = {}): Buffer {
  const count = o.chunkCount ?? g.chunkCount;
  const bytes = o.bitmapBytes ?? Math.ceil(count / 8);
  const buf = Buffer.alloc(32 + bytes);
  buf.write(o.magic ?? DIRTY_MAGIC, 0, 8, 'latin1');
  buf.writeUInt32LE(o.version ?? 1, 8);
  buf.writeUInt32LE(o.shift ?? Math.log2(g.chunkSizeBytes), 12);
  buf.writeBigUInt64LE(BigInt(o.sizeBytes ?? g.sizeBytes), 16);
  buf.writeBigUInt64LE(BigInt(count), 24);
  for (const n of chunks) buf.writeUInt8(buf.readUInt8(32 + (n >> 3)) | (1 << (n & 7)), 32 + (n >> 3));
  return buf;
}

/** The rejection of `p`, which must be a SlipwayError. */
async function rejection(p: Promise<unknown>): Promise<SlipwayError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(SlipwayError);
    return err as SlipwayError;
  }
  throw new Error('expected a rejection, the promise resolved');
}

function sha256(b: Buffer): Buffer {
  return createHash('sha256').update(b).digest();
}

function chunkOf(img: Buffer, g: Geometry, n: number): Buffer {
  const at = n * g.chunkSizeBytes;
  return img.subarray(at, Math.min(at + g.chunkSizeBytes, g.sizeBytes));
}

/** Chunks of `file` that differ from `expected` (an empty list when the file is the image). */
function differingChunks(file: string, expected: Buffer, g: Geometry): number[] {
  const got = readFileSync(file);
  if (got.byteLength !== expected.byteLength) return [-1];
  const out: number[] = [];
  for (let n = 0; n < g.chunkCount; n++) if (!chunkOf(got, g, n).equals(chunkOf(expected, g, n))) out.push(n);
  return out;
}

/** The index entry of chunk `n`, or undefined for a hole. */
function entryOf(disk: DiskArtifact, n: number): IndexEntry | undefined {
  const e = disk.index.map[n] as number;
  return e === HOLE ? undefined : (disk.index.entries[e] as IndexEntry);
}

function packOf(disk: DiskArtifact, n: number): string | undefined {
  const e = entryOf(disk, n);
  return e ? (disk.index.packs[e.pack] as { digest: string }).digest : undefined;
}

/**
 * An overlay directory as slipway-blk leaves it: `data`, a sparse file of the disk's size holding
 * the written chunks at their offsets (a chunk zeroed by DISCARD is a punched hole: nothing is
 * written for it), and `dirty`, the bitmap naming them. `stray` puts bytes into `data` at chunks
 * that are NOT dirty: staging must ignore them.
 */
function makeOverlay(dir: string, g: Geometry, written: Map<number, Buffer | null>, stray: number[] = []): { data: string; dirty: string } {
  mkdirSync(dir, { recursive: true });
  const data = join(dir, 'data');
  const fd = openSync(data, 'w');
  try {
    ftruncateSync(fd, g.sizeBytes);
    for (const [n, bytes] of written) if (bytes) writeSync(fd, bytes, 0, bytes.byteLength, n * g.chunkSizeBytes);
    for (const n of stray) writeSync(fd, randomBytes(4096), 0, 4096, n * g.chunkSizeBytes + 100);
  } finally {
    closeSync(fd);
  }
  const dirty = join(dir, 'dirty');
  writeFileSync(dirty, dirtyBitmap(g, [...written.keys()]));
  return { data, dirty };
}

/** Random bytes in the first `fill` of a chunk of `len` bytes, zeros after: compressible, non-zero. */
function chunkData(len: number, fill: number): Buffer {
  const b = Buffer.alloc(len);
  randomBytes(Math.max(1, Math.floor(len * fill))).copy(b);
  return b;
}

// ---------------------------------------------------------------------------------------------

describe('readDirtyBitmap', () => {
  // 45 chunks of 64 KiB, the last one 4 KiB: the chunk count is not a multiple of 8
  const g: Geometry = { sizeBytes: 44 * (64 << 10) + 4096, chunkSizeBytes: 64 << 10, chunkCount: 45 };
  const dir = join(work, 'bitmaps');
  mkdirSync(dir, { recursive: true });
  const file = (name: string, body: Buffer): string => {
    const p = join(dir, name);
    writeFileSync(p, body);
    return p;
  };

  it('reads back the chunks a hand-written bitmap names', async () => {
    const p = file('good', dirtyBitmap(g, [0, 5, 9, 44]));
    expect(readFileSync(p).byteLength).toBe(32 + 6);
    const got = await readDirtyBitmap(p, g);
    expect(got).toEqual({ ...g, chunks: [0, 5, 9, 44] });
    // an all-clear bitmap and one with every chunk set
    expect((await readDirtyBitmap(file('clear', dirtyBitmap(g, [])), g)).chunks).toEqual([]);
    const all = Array.from({ length: 45 }, (_, i) => i);
    expect((await readDirtyBitmap(file('all', dirtyBitmap(g, all)), g)).chunks).toEqual(all);
  });

  it('a missing bitmap means no chunk is dirty; an unreadable one is an error', async () => {
    expect(await readDirtyBitmap(join(dir, 'no-such-file'), g)).toEqual({ ...g, chunks: [] });
    // a directory where the bitmap should be is not "nothing dirty"
    const err = await rejection(readDirtyBitmap(dir, g));
    expect(err.code).not.toBe('OVERLAY_INVALID');
    expect(err.message).toContain(dir);
  });

  const good = dirtyBitmap(g, [0, 5, 9, 44]);
  const malformed: [string, Buffer, RegExp][] = [
    ['wrong magic', dirtyBitmap(g, [1], { magic: 'SLWYMAP1' }), /magic/],
    ['version 2', dirtyBitmap(g, [1], { version: 2 }), /version 2\b/],
    ['chunk size 128 KiB against the disk\'s 64 KiB', dirtyBitmap(g, [1], { shift: 17 }), /chunk size 2\^17.*65536/],
    ['an absurd chunk shift', dirtyBitmap(g, [1], { shift: 63 }), /chunk size 2\^63/],
    ['disk size one sector larger', dirtyBitmap(g, [1], { sizeBytes: g.sizeBytes + 512 }), new RegExp(`${g.sizeBytes + 512}.*${g.sizeBytes}`)],
    ['chunk count 46 against 45', dirtyBitmap(g, [1], { chunkCount: 46 }), /46 chunks.*45/],
    ['one bitmap byte short', dirtyBitmap(g, [1], { bitmapBytes: 5 }), /5 bitmap bytes for 45 chunks/],
    ['one bitmap byte too many', dirtyBitmap(g, [1], { bitmapBytes: 7 }), /7 bitmap bytes for 45 chunks/],
    ['a bit set for chunk 45 of 45', dirtyBitmap(g, [3, 45]), /chunk 45.*past the last chunk 44/],
    ['a bit set for chunk 47 (the last bit of the last byte)', dirtyBitmap(g, [47]), /chunk 47.*past the last chunk 44/],
    ['a header cut at 31 bytes', good.subarray(0, 31), /not a dirty bitmap|truncated|short/],
    ['the magic alone', good.subarray(0, 8), /not a dirty bitmap|truncated|short/],
    ['an empty file', Buffer.alloc(0), /not a dirty bitmap|truncated|short|empty/],
  ];
  it.each(malformed)('refuses %s with OVERLAY_INVALID', async (name, body, why) => {
    const p = file(`bad-${name.replace(/[^a-z0-9]+/gi, '-')}`, body);
    const err = await rejection(readDirtyBitmap(p, g));
    expect(err.code).toBe('OVERLAY_INVALID');
    expect(err.message).toContain(p);
    expect(err.message).toMatch(why);
  });
});

describe('stageDirtyChunks', () => {
  it('copies exactly the dirty chunks, a short last chunk and a sparse tail included', async () => {
    // 10 chunks of 64 KiB, the last one 12 KiB
    const g: Geometry = { sizeBytes: 9 * (64 << 10) + (12 << 10), chunkSizeBytes: 64 << 10, chunkCount: 10 };
    const dir = join(work, 'stage-small');
    const written = new Map<number, Buffer | null>([[1, randomBytes(64 << 10)], [4, null], [9, randomBytes(12 << 10)]]);
    const { data, dirty } = makeOverlay(dir, g, written, [2, 7]);
    const bitmap = await readDirtyBitmap(dirty, g);
    expect(bitmap.chunks).toEqual([1, 4, 9]);
    const staging = join(dir, 'staging');
    expect(await stageDirtyChunks(data, bitmap, staging)).toBe(2 * (64 << 10) + (12 << 10));
    const staged = readFileSync(staging);
    expect(staged.byteLength).toBe(g.sizeBytes);
    const expected = Buffer.alloc(g.sizeBytes);
    (written.get(1) as Buffer).copy(expected, 1 * (64 << 10));
    (written.get(9) as Buffer).copy(expected, 9 * (64 << 10));
    // the stray bytes at chunks 2 and 7 are not dirty: not staged
    expect(staged.equals(expected)).toBe(true);

    // an overlay `data` that ends before the disk does: what is past its end reads as zeros
    const shortData = join(dir, 'data-short');
    writeFileSync(shortData, Buffer.concat([Buffer.alloc(9 * (64 << 10)), Buffer.from('tail')]));
    const staging2 = join(dir, 'staging2');
    const tailOnly = { ...g, chunks: [8, 9] };
    expect(await stageDirtyChunks(shortData, tailOnly, staging2)).toBe((64 << 10) + (12 << 10));
    const staged2 = readFileSync(staging2);
    expect(staged2.byteLength).toBe(g.sizeBytes);
    const expected2 = Buffer.alloc(g.sizeBytes);
    expected2.write('tail', 9 * (64 << 10), 'latin1');
    expect(staged2.equals(expected2)).toBe(true);
  });
});

describe('seedChunks', () => {
  it('puts each staged non-zero chunk under the sha256 of its bytes, skipping zero chunks', async () => {
    const g: Geometry = { sizeBytes: 10 * (64 << 10) - 4096, chunkSizeBytes: 64 << 10, chunkCount: 10 };
    const written = new Map<number, Buffer | null>([[1, chunkData(64 << 10, 0.5)], [4, null], [9, chunkData((64 << 10) - 4096, 1)]]);
    const { data, dirty } = makeOverlay(join(work, 'seed'), g, written);
    const bitmap = await readDirtyBitmap(dirty, g);
    const staging = join(work, 'seed', 'staging');
    await stageDirtyChunks(data, bitmap, staging);
    const put = new Map<string, Buffer>();
    const n = await seedChunks(staging, bitmap, pool, async (hex, bytes) => {
      put.set(hex, Buffer.from(bytes));
      return true;
    });
    expect(n).toBe(2);
    const want = [written.get(1) as Buffer, written.get(9) as Buffer];
    expect([...put.keys()].sort()).toEqual(want.map((b) => sha256(b).toString('hex')).sort());
    for (const [hex, bytes] of put) expect(sha256(bytes).toString('hex')).toBe(hex);
  });
});

describe('snapshots through a registry', () => {
  const CHUNK = 512 << 10;
  // 48 chunks, the last one 312 KiB
  const SIZE = 24 * (1 << 20) - (200 << 10);
  const g: Geometry = { sizeBytes: SIZE, chunkSizeBytes: CHUNK, chunkCount: 48 };
  const BASE_HOLES = new Set([5, 6, 7, 15, 33]);

  let baseImage: Buffer;
  let baseTarget: Target;
  let base: DiskArtifact;
  /** what s1 (base + the first overlay) must read as */
  let expected1: Buffer;
  let s1Digest: string | undefined;

  const stage = async (name: string, written: Map<number, Buffer | null>, stray: number[] = []) => {
    const dir = join(work, name);
    const { data, dirty } = makeOverlay(dir, g, written, stray);
    const bitmap = await readDirtyBitmap(dirty, g);
    const staging = join(dir, 'staging');
    await stageDirtyChunks(data, bitmap, staging);
    return { bitmap, staging };
  };

  const pullAndCompare = async (target: Target, reference: string, expected: Buffer): Promise<DiskArtifact> => {
    const disk = await openDiskArtifact(target, reference);
    const out = join(work, `pulled-${randomBytes(4).toString('hex')}.img`);
    await pullDisk({ target, disk, outFile: out, pool });
    expect(differingChunks(out, expected, g), `${target.name}:${reference} differs in these chunks`).toEqual([]);
    expect(sha256File(out)).toBe(createHash('sha256').update(expected).digest('hex'));
    rmSync(out);
    return disk;
  };

  beforeAll(async () => {
    // the base: every chunk partly random (so it compresses some), holes at BASE_HOLES, chunk 40 a
    // copy of chunk 39 (stored once), the short last chunk full of data
    baseImage = Buffer.alloc(SIZE);
    for (let n = 0; n < g.chunkCount; n++) {
      if (BASE_HOLES.has(n) || n === 40) continue;
      const len = Math.min(CHUNK, SIZE - n * CHUNK);
      chunkData(len, n === 47 ? 1 : ((n % 4) + 1) / 5).copy(baseImage, n * CHUNK);
    }
    chunkOf(baseImage, g, 39).copy(baseImage, 40 * CHUNK);
    const basePath = join(work, 'base.img');
    writeFileSync(basePath, baseImage);
    baseTarget = await targets.open(parseRef(`${registry.host}/snap/base:v1`));
    await pushDisk({ file: basePath, target: baseTarget, tag: 'v1', pool });
    base = await openDiskArtifact(baseTarget, 'v1');
    expect(base.index.packs.length).toBeGreaterThan(1);
    expect(base.config.stats.zeroChunks).toBe(BASE_HOLES.size);
  });

  it('s1: only the dirty chunks are new; the rest is the base\'s, in the base\'s packs; pulls back byte for byte', async () => {
    // the overlay: new data in chunk 2, a base hole (6) filled, chunk 20 zeroed (punched), chunk 30
    // rewritten with the bytes it had, the short last chunk replaced; stray bytes at clean chunk 11
    const new2 = chunkData(CHUNK, 0.5);
    const new6 = chunkData(CHUNK, 0.3);
    const new47 = chunkData(SIZE - 47 * CHUNK, 0.7);
    const written = new Map<number, Buffer | null>([[2, new2], [6, new6], [20, null], [30, Buffer.from(chunkOf(baseImage, g, 30))], [47, new47]]);
    const { bitmap, staging } = await stage('overlay-s1', written, [11]);
    expect(bitmap.chunks).toEqual([2, 6, 20, 30, 47]);

    expected1 = Buffer.from(baseImage);
    new2.copy(expected1, 2 * CHUNK);
    new6.copy(expected1, 6 * CHUNK);
    expected1.fill(0, 20 * CHUNK, 21 * CHUNK);
    new47.copy(expected1, 47 * CHUNK);

    const result = await pushSnapshot({ base, baseTarget, staging, dirty: bitmap, target: baseTarget, tag: 's1', pool });
    expect(result.dirtyChunks).toBe(5);
    expect(result.baseBlobsCopied).toBe(0); // the same repository: nothing to mount
    // new: 2, 6 and 47. Not new: 20 (now a hole) and 30 (the base's bytes, found in the base)
    expect(result.newChunks).toBe(3);
    expect(result.uploadedPacks).toBe(1);

    s1Digest = await manifestDigest(registry.host, 'snap/base', 's1');
    expect(s1Digest).toBe(result.manifest.digest);
    expect(await manifestDigest(registry.host, 'snap/base', 'v1')).toBe(base.manifestDescriptor.digest);

    const s1 = await pullAndCompare(baseTarget, 's1', expected1);
    // subject and config.base name the base manifest
    expect(s1.manifest.subject).toEqual(base.manifestDescriptor);
    expect(s1.config.base).toEqual(base.manifestDescriptor);
    expect(result.config.base).toEqual(base.manifestDescriptor);
    expect(s1.config.stats.zeroChunks).toBe(BASE_HOLES.size); // 6 filled, 20 zeroed
    expect(result.reusedChunks + result.newChunks).toBe(s1.index.entries.length);

    const basePacks = new Set(base.index.packs.map((p) => p.digest));
    for (let n = 0; n < g.chunkCount; n++) {
      const e = entryOf(s1, n);
      if (n === 20) {
        expect(e, 'chunk 20 was zeroed: a hole').toBeUndefined();
        continue;
      }
      if ([2, 6, 47].includes(n)) {
        expect(e?.digest.equals(sha256(chunkOf(expected1, g, n))), `chunk ${n} digest`).toBe(true);
        expect(basePacks.has(packOf(s1, n) as string), `chunk ${n} is in a new pack`).toBe(false);
        continue;
      }
      // every other chunk (30, dirty with its old bytes, included) is the base's entry
      const be = entryOf(base, n);
      if (!be) {
        expect(e, `chunk ${n} is a hole in the base`).toBeUndefined();
        continue;
      }
      expect(e, `chunk ${n}`).toBeDefined();
      expect(e?.digest.equals(be.digest), `chunk ${n} digest`).toBe(true);
      expect(packOf(s1, n), `chunk ${n} pack`).toBe(packOf(base, n));
      expect([e?.offset, e?.storedLength, e?.flags], `chunk ${n} place`).toEqual([be.offset, be.storedLength, be.flags]);
    }
    // the manifest lists the base packs still used plus the one new pack
    const layers = new Set(s1.manifest.layers.slice(1).map((l) => l.digest));
    expect(new Set(s1.index.packs.map((p) => p.digest))).toEqual(layers);

    // uploaded: the new chunks' pack, not much more than the dirty chunks' stored bytes
    const dirtyStored = bitmap.chunks.reduce((s, n) => s + (entryOf(s1, n)?.storedLength ?? 0), 0);
    const newStored = [2, 6, 47].reduce((s, n) => s + (entryOf(s1, n) as IndexEntry).storedLength, 0);
    expect(result.uploadedBytes).toBeGreaterThanOrEqual(newStored);
    expect(result.uploadedBytes).toBeLessThanOrEqual(1.1 * dirtyStored + s1.config.index.size);

    // the same snapshot into another repository: the base's blobs are mounted there first
    const other = await targets.open(parseRef(`${registry.host}/snap/other:s1`));
    const r2 = await pushSnapshot({ base, baseTarget, staging, dirty: bitmap, target: other, tag: 's1', pool });
    expect(r2.baseBlobsCopied).toBe(base.manifest.layers.length + 1); // config, index, packs
    expect(r2.newChunks).toBe(3);
    expect(r2.uploadedBytes).toBe(result.uploadedBytes);
    // packs and index are cut from the content: the same snapshot in both repositories
    expect(r2.manifest.digest).toBe(result.manifest.digest);
    // the base was copied untagged: by digest only
    expect(await manifestDigest(registry.host, 'snap/other', base.manifestDescriptor.digest)).toBe(base.manifestDescriptor.digest);
    expect(await manifestDigest(registry.host, 'snap/other', 'v1')).toBeUndefined();
    const otherS1 = await pullAndCompare(other, 's1', expected1);
    expect(otherS1.manifest.subject).toEqual(base.manifestDescriptor);
  });

  it('s2, a snapshot of s1: its subject is s1, its index refers to s1\'s and the base\'s packs', async () => {
    expect(s1Digest, 'needs s1 from the previous test').toBeDefined();
    const s1 = await openDiskArtifact(baseTarget, 's1');
    // chunk 10 gets new data; chunk 40 (a copy of 39 in the base) gets new data, 39 stays
    const new10 = chunkData(CHUNK, 0.6);
    const new40 = chunkData(CHUNK, 0.4);
    const { bitmap, staging } = await stage('overlay-s2', new Map([[10, new10], [40, new40]]));
    const expected2 = Buffer.from(expected1);
    new10.copy(expected2, 10 * CHUNK);
    new40.copy(expected2, 40 * CHUNK);

    const result = await pushSnapshot({ base: s1, baseTarget, staging, dirty: bitmap, target: baseTarget, tag: 's2', pool });
    expect(result.newChunks).toBe(2);
    expect(result.uploadedPacks).toBe(1);
    const s2 = await pullAndCompare(baseTarget, 's2', expected2);
    expect(s2.manifest.subject).toEqual(s1.manifestDescriptor);
    expect(s2.manifest.subject?.digest).toBe(s1Digest);
    expect(s2.config.base).toEqual(s1.manifestDescriptor);
    // s1's new chunks stay in s1's pack, the untouched base chunks in the base's packs
    for (const n of [2, 6, 47]) expect(packOf(s2, n), `chunk ${n}`).toBe(packOf(s1, n));
    for (const n of [0, 1, 3, 30, 39, 46]) expect(packOf(s2, n), `chunk ${n}`).toBe(packOf(base, n));
    expect(entryOf(s2, 20)).toBeUndefined();
    for (const n of [10, 40]) expect(entryOf(s2, n)?.digest.equals(sha256(chunkOf(expected2, g, n))), `chunk ${n}`).toBe(true);
    expect(entryOf(s2, 39)?.digest.equals(entryOf(base, 39)?.digest as Buffer)).toBe(true);

    // s1 is untouched by s2
    expect(await manifestDigest(registry.host, 'snap/base', 's1')).toBe(s1Digest);
    await pullAndCompare(baseTarget, 's1', expected1);

    // s2 into a repository that holds neither s1 nor the base: s1's whole graph is mounted first
    const third = await targets.open(parseRef(`${registry.host}/snap/third:s2`));
    const r3 = await pushSnapshot({ base: s1, baseTarget, staging, dirty: bitmap, target: third, tag: 's2', pool });
    expect(r3.baseBlobsCopied).toBe(s1.manifest.layers.length + 1);
    expect(r3.manifest.digest).toBe(result.manifest.digest);
    await pullAndCompare(third, 's2', expected2);
  });

  it('a snapshot of a VM that wrote nothing uploads no pack and reads as its base', async () => {
    const dir = join(work, 'overlay-empty');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'data'), '');
    const bitmap = await readDirtyBitmap(join(dir, 'dirty'), g); // never flushed: no file
    expect(bitmap.chunks).toEqual([]);
    const staging = join(dir, 'staging');
    expect(await stageDirtyChunks(join(dir, 'data'), bitmap, staging)).toBe(0);
    const result = await pushSnapshot({ base, baseTarget, staging, dirty: bitmap, target: baseTarget, tag: 's0', pool });
    expect(result.newChunks).toBe(0);
    expect(result.uploadedPacks).toBe(0);
    expect(result.uploadedBytes).toBe(0);
    const s0 = await pullAndCompare(baseTarget, 's0', baseImage);
    expect(s0.manifest.subject).toEqual(base.manifestDescriptor);
    expect(Array.from(s0.index.map, (e) => e === HOLE)).toEqual(Array.from(base.index.map, (e) => e === HOLE));
    for (let n = 0; n < g.chunkCount; n++) expect(packOf(s0, n), `chunk ${n}`).toBe(packOf(base, n));
  });

  describe('a failed snapshot push leaves the tag as it was', () => {
    it('a staging file of the wrong size is refused before anything is tagged', async () => {
      expect(s1Digest, 'needs s1').toBeDefined();
      const { bitmap, staging } = await stage('overlay-bad-size', new Map([[12, chunkData(CHUNK, 0.5)]]));
      for (const size of [SIZE + CHUNK, SIZE - 512]) {
        const fd = openSync(staging, 'r+');
        ftruncateSync(fd, size);
        closeSync(fd);
        for (const [target, repo] of [[baseTarget, 'snap/base'], [await targets.open(parseRef(`${registry.host}/snap/other:s1`)), 'snap/other']] as const) {
          const before = await manifestDigest(registry.host, repo, 's1');
          expect(before).toBeDefined();
          const err = await rejection(pushSnapshot({ base, baseTarget, staging, dirty: bitmap, target, tag: 's1', pool }));
          expect(err.code).toBe('INVALID_ARGUMENT');
          expect(err.message).toContain(String(size));
          expect(await manifestDigest(registry.host, repo, 's1')).toBe(before);
          // nor is a new tag made
          await rejection(pushSnapshot({ base, baseTarget, staging, dirty: bitmap, target, tag: 's-bad', pool }));
          expect(await manifestDigest(registry.host, repo, 's-bad')).toBeUndefined();
        }
      }
      expect(await manifestDigest(registry.host, 'snap/base', 's1')).toBe(s1Digest);
    });

    it('pushDisk refuses a delta without a base, or in another chunk size than its base', async () => {
      const img = join(work, 'delta-args.img');
      writeFileSync(img, Buffer.alloc(SIZE));
      const noBase = await rejection(pushDisk({ file: img, target: baseTarget, tag: 's-bad', pool, changed: () => true }));
      expect(noBase.code).toBe('INVALID_ARGUMENT');
      expect(noBase.message).toMatch(/base/);
      const otherChunk = await rejection(pushDisk({ file: img, target: baseTarget, tag: 's-bad', pool, base, chunkSizeBytes: CHUNK / 2, changed: () => true }));
      expect(otherChunk.code).toBe('INVALID_ARGUMENT');
      expect(otherChunk.message).toContain(String(CHUNK / 2));
      expect(await manifestDigest(registry.host, 'snap/base', 's-bad')).toBeUndefined();
    });

    it('blob uploads failing (fault proxy): the push fails before its manifest, s1 is unchanged', async () => {
      expect(s1Digest, 'needs s1').toBeDefined();
      const proxy = await startFaultProxy({ target: registry.host, mode: '500', passBlobPuts: 0 });
      const proxied = new Targets({ retry: { maxAttempts: 2, baseDelayMs: 5, maxDelayMs: 20 } });
      try {
        const target = await proxied.open(parseRef(`${proxy.host}/snap/base:s1`));
        const { bitmap, staging } = await stage('overlay-fault-blob', new Map([[12, chunkData(CHUNK, 0.5)], [13, chunkData(CHUNK, 0.5)]]));
        const err = await rejection(pushSnapshot({ base, baseTarget: target, staging, dirty: bitmap, target, tag: 's1', pool }));
        expect(err.code).toBe('REGISTRY_ERROR');
        expect(proxy.doomedDigest()).toBeDefined();
        expect(err.message).toContain(proxy.doomedDigest());
        expect(proxy.faultedBlobPuts()).toBeGreaterThanOrEqual(1);
        expect(proxy.requests.filter((q) => q.method === 'PUT' && q.path.includes('/manifests/'))).toEqual([]);
      } finally {
        await proxied.close();
        await proxy.stop();
      }
      expect(await manifestDigest(registry.host, 'snap/base', 's1')).toBe(s1Digest);
      await pullAndCompare(baseTarget, 's1', expected1);
    });

    it('the manifest PUT failing: every blob is in, the tag still is s1', async () => {
      expect(s1Digest, 'needs s1').toBeDefined();
      const proxy = await startFaultProxy({ target: registry.host, mode: '500', passBlobPuts: Number.MAX_SAFE_INTEGER, failManifestPuts: true });
      const proxied = new Targets({ retry: { maxAttempts: 2, baseDelayMs: 5, maxDelayMs: 20 } });
      try {
        const target = await proxied.open(parseRef(`${proxy.host}/snap/base:s1`));
        const { bitmap, staging } = await stage('overlay-fault-manifest', new Map([[14, chunkData(CHUNK, 0.5)]]));
        const err = await rejection(pushSnapshot({ base, baseTarget: target, staging, dirty: bitmap, target, tag: 's1', pool }));
        expect(err.code).toBe('REGISTRY_ERROR');
        expect(proxy.faultedManifestPuts()).toBeGreaterThanOrEqual(1);
      } finally {
        await proxied.close();
        await proxy.stop();
      }
      expect(await manifestDigest(registry.host, 'snap/base', 's1')).toBe(s1Digest);
      await pullAndCompare(baseTarget, 's1', expected1);
    });
  });
});
