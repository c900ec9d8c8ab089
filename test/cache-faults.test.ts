/**
 * Faults under the host chunk cache, through the real docker-registry (with a chaos proxy in
 * front where a fault must be forced): registry outages with a warm and a cold cache, 5xx bursts
 * and endless 5xx, connections dropped mid-body, corrupted blobs (with and without a mirror),
 * corrupted and lost chunk files, servers that ignore Range, a small disk budget, pins against
 * another cache's gc, a really full file system (tmpfs), and two processes sharing one cache dir.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChunkCache } from '../src/cache/chunk-cache.js';
import type { LazyDisk } from '../src/cache/lazy-disk.js';
import { HOLE, type IndexEntry } from '../src/disk/format.js';
import { pushDisk } from '../src/disk/push.js';
import type { PushResult } from '../src/disk/push.js';
import { parseRef } from '../src/oci/ref.js';
import { chunkCacheBed, chunkHex } from './helpers/cache-bed.js';
import type { ChaosProxy } from './helpers/chaos-proxy.js';
import { chunkFiles, expectTier1Consistent, rejection, tmpFiles, within } from './helpers/cache-checks.js';
import { makeSparse } from './helpers/images.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;
const PACK = 512 * KiB;
const DISK_BYTES = 4 * MiB;
const REPO = 'faults/disk';
const TAG = 'v1';

const bed = chunkCacheBed('slipway-cache-faults-', { cleanupBoundMs: 5000 });
const { targets, work, freshDir, openCache, chaos } = bed;
let imageFile: string;
let image: Buffer;
let pushed: PushResult;

beforeAll(async () => {
  // random (incompressible) data with holes: 52 distinct 64 KiB chunks, 12 holes, 512 KiB packs
  imageFile = makeSparse(join(work, 'disk.img'), DISK_BYTES, [
    { offset: 0, length: 1536 * KiB },
    { offset: 2 * MiB, length: 1792 * KiB },
  ]);
  image = readFileSync(imageFile);
  const target = await targets.open(parseRef(`${bed.registry.host}/${REPO}:${TAG}`));
  pushed = await pushDisk({ file: imageFile, target, tag: TAG, pool: bed.pool, chunkSizeBytes: CHUNK, packSizeBytes: PACK });
  expect(pushed.config.stats.uniqueChunks).toBe(52);
  expect(pushed.config.stats.zeroChunks).toBe(12);
  expect(pushed.config.stats.packs).toBeGreaterThan(4);
});

// ---------------------------------------------------------------------------------------------
// helpers

const refVia = (host: string): string => `${host}/${REPO}:${TAG}`;

/** Chunk numbers of the disk that are not holes. */
/** A cold cache (a directory of its own) and the disk opened in it through a new chaos proxy. */
async function diskViaChaos(overrides: Parameters<typeof openCache>[0] = {}, opts: Parameters<typeof openCache>[1] = {}): Promise<{ proxy: ChaosProxy; cache: ChunkCache; disk: LazyDisk }> {
  const proxy = await chaos();
  const { cache } = await openCache({ cacheDir: freshDir(), ...overrides }, opts);
  const disk = await cache.openDisk(refVia(proxy.host));
  return { proxy, cache, disk };
}

function dataChunks(disk: LazyDisk): number[] {
  const out: number[] = [];
  disk.artifact.index.map.forEach((e, n) => {
    if (e !== HOLE) out.push(n);
  });
  return out;
}

function expected(offset: number, length: number): Buffer {
  return image.subarray(offset, offset + length);
}

/** The bytes equal the image's at offset (Buffer.equals: vitest's deep equality is slow on buffers). */
function expectImage(got: Buffer, offset: number, length: number): void {
  expect(got.byteLength).toBe(length);
  const want = expected(offset, length);
  if (got.equals(want)) return;
  let i = 0;
  while (i < length && got[i] === want[i]) i++;
  expect.fail(`bytes ${offset}+${length} differ from the image, first at ${offset + i}`);
}

// ---------------------------------------------------------------------------------------------

describe('registry outage', () => {
  it('with a warm cache, a tag opens at its last-seen digest and cached chunks are served', async () => {
    const proxy = await chaos();
    const cacheDir = freshDir();
    const first = await openCache({ cacheDir, fetchDeadlineMs: 1500 });
    const warm = await first.cache.openDisk(refVia(proxy.host));
    expect(warm.resolvedOffline).toBe(false);
    const chunks = dataChunks(warm);
    const [a, b] = [chunks[3] as number, chunks[40] as number];
    await warm.read(a * CHUNK, 2 * CHUNK); // a and a+1
    await warm.read(b * CHUNK + 1000, 5000);
    const digest = warm.digest;
    await first.cache.close();

    await proxy.refuse();
    const started = Date.now();
    const second = await openCache({ cacheDir, fetchDeadlineMs: 1500 });
    const disk = await within(15_000, second.cache.openDisk(refVia(proxy.host)), 'offline open');
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(disk.resolvedOffline).toBe(true);
    expect(disk.digest).toBe(digest);
    const warning = second.logs.has('warn', 'registry unreachable; using the digest last seen for this tag');
    expect(warning, second.logs.text).toBeDefined();
    expect(warning?.digest).toBe(digest);
    expect(String(warning?.reference)).toContain(proxy.host);

    expectImage(await disk.read(a * CHUNK, 2 * CHUNK), a * CHUNK, 2 * CHUNK);
    expectImage(await disk.read(b * CHUNK + 1000, 5000), b * CHUNK + 1000, 5000);
    // a hole needs no registry either
    const hole = disk.artifact.index.map.indexOf(HOLE);
    expect((await disk.read(hole * CHUNK, CHUNK)).equals(Buffer.alloc(CHUNK))).toBe(true);
    expect(disk.stats.tier1Chunks).toBe(3);
    expect(disk.stats.tier2Chunks).toBe(0);

    // a chunk that was never fetched fails clearly, bounded by the fetch deadline
    const cold = chunks[20] as number;
    const t0 = Date.now();
    const err = await rejection(within(20_000, disk.read(cold * CHUNK, 10), 'offline read of an uncached chunk'));
    expect(err.code).toBe('REGISTRY_UNREACHABLE');
    expect(err.message).toContain(proxy.host);
    expect(Date.now() - t0).toBeLessThan(1500 + 6000);
  });

  it('a disk never seen fails to open with REGISTRY_UNREACHABLE naming the registry, within seconds', async () => {
    const proxy = await chaos();
    await proxy.refuse();
    const { cache } = await openCache({ cacheDir: freshDir(), fetchDeadlineMs: 1500 });
    const t0 = Date.now();
    const err = await rejection(within(20_000, cache.openDisk(refVia(proxy.host)), 'open with the registry down'));
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(err.code).toBe('REGISTRY_UNREACHABLE');
    expect(err.message).toContain(`registry ${proxy.host}`);
    expect(cache.stats().disk.chunks).toBe(0);
  });

  it('a registry answering 503 for manifests: the tag opens at its last-seen digest, chunks still come', async () => {
    const proxy = await chaos();
    const cacheDir = freshDir();
    const first = await openCache({ cacheDir });
    const warm = await first.cache.openDisk(refVia(proxy.host));
    const chunks = dataChunks(warm);
    const a = chunks[1] as number;
    await warm.read(a * CHUNK, 100);
    await first.cache.close();

    proxy.fail('all', { match: 'manifests', retryAfter: '0' });
    const second = await openCache({ cacheDir, fetchDeadlineMs: 3000 });
    const disk = await within(10_000, second.cache.openDisk(refVia(proxy.host)), 'open with manifests failing');
    expect(disk.resolvedOffline).toBe(true);
    expect(disk.digest).toBe(warm.digest);
    expect(second.logs.has('warn', 'registry unreachable; using the digest last seen for this tag'), second.logs.text).toBeDefined();
    expect(proxy.count({ kind: 'manifest', fault: 'status', status: 503 })).toBeGreaterThanOrEqual(5);
    expectImage(await disk.read(a * CHUNK, CHUNK), a * CHUNK, CHUNK);
    expect(disk.stats.tier1Chunks).toBe(1);
    // blobs are still answered: a chunk never fetched comes from the registry
    const b = chunks[44] as number;
    expectImage(await disk.read(b * CHUNK + 3, 300), b * CHUNK + 3, 300);
    expect(disk.stats.tier2Chunks).toBe(1);
  });
});

describe('5xx in the middle of reads', () => {
  it('N 503s then recovery: the read succeeds and the remote retries are counted', async () => {
    const { proxy, cache, disk } = await diskViaChaos({ fetchDeadlineMs: 10_000 });
    const n = dataChunks(disk)[10] as number;
    proxy.clearLog();
    // 7 > the transport's 5 attempts: one whole remote-tier round fails, the next gets through
    proxy.fail(7, { match: 'blobs', retryAfter: '0' });
    const data = await within(15_000, disk.read(n * CHUNK + 123, 40_000), 'read through 503s');
    expectImage(data, n * CHUNK + 123, 40_000);
    expect(proxy.count({ fault: 'status', status: 503 })).toBe(7);
    expect(proxy.count({ kind: 'blob', status: 206 })).toBe(1);
    const remote = cache.stats().remote;
    expect(remote.retries).toBeGreaterThanOrEqual(1);
    expect(remote.requests).toBe(2);
    expect(remote.chunks).toBe(1);
    expect(disk.stats.tier2Chunks).toBe(1);
    expectTier1Consistent(cache);
  });

  it('503s forever: the read fails after fetchDeadlineMs, leaving no chunk or temp file behind', async () => {
    const deadline = 1500;
    const { proxy, cache, disk } = await diskViaChaos({ fetchDeadlineMs: deadline });
    const chunks = dataChunks(disk);
    const wanted = [chunks[5] as number, chunks[6] as number];
    proxy.fail('all', { match: 'blobs', retryAfter: '0' });
    const t0 = Date.now();
    const err = await rejection(within(20_000, disk.read((wanted[0] as number) * CHUNK, 2 * CHUNK), 'read against endless 503s'));
    const elapsed = Date.now() - t0;
    expect(err.code).toBe('REGISTRY_UNREACHABLE');
    expect(err.message).toContain(`gave up after ${deadline} ms`);
    expect(err.message).toContain(proxy.host);
    expect(elapsed).toBeGreaterThanOrEqual(deadline);
    expect(elapsed).toBeLessThan(deadline + 4000);
    expect(proxy.count({ fault: 'status' })).toBeGreaterThan(5);

    for (const n of wanted) expect(existsSync(cache.chunkPath(chunkHex(disk, n)))).toBe(false);
    expect(chunkFiles(cache.config.cacheDir)).toEqual([]);
    expect(tmpFiles(cache.config.cacheDir)).toEqual([]);
    expect(cache.stats().disk.chunks).toBe(0);
    expect(cache.stats().disk.bytes).toBe(0);
    expect(cache.chunksInFlight()).toBe(0);

    // the failure is not remembered: once the registry is back the same read works
    proxy.passThrough();
    expectImage(await disk.read((wanted[0] as number) * CHUNK, 2 * CHUNK), (wanted[0] as number) * CHUNK, 2 * CHUNK);
    // one request for them: the failed read's retries stopped at its deadline (none came late)
    expect(proxy.count({ kind: 'blob', status: 206 })).toBe(1);
    await disk.settle();
    expect(expectTier1Consistent(cache).chunks).toBe(2);
  });

  it('a registry that accepts a request and never answers: the read fails about fetchDeadlineMs later, and its requests are cut then', async () => {
    const deadline = 1500;
    // the transport's own timeout far past the deadline: what ends the hung requests is the deadline
    const { proxy, cache, disk } = await diskViaChaos({ fetchDeadlineMs: deadline }, { requestTimeoutMs: 30_000 });
    const n = dataChunks(disk)[33] as number;
    proxy.stall('all', 'blobs');
    try {
      const t0 = Date.now();
      const err = await rejection(within(deadline + 8000, disk.read(n * CHUNK, 1000), 'read from a hung registry'));
      expect(err.code).toBe('REGISTRY_UNREACHABLE');
      expect(err.message).toContain(proxy.host);
      expect(Date.now() - t0).toBeLessThan(deadline + 3000);
      const stalled = proxy.count({ fault: 'stall' });
      expect(stalled).toBeGreaterThanOrEqual(1);
      expect(chunkFiles(cache.config.cacheDir)).toEqual([]);
      expect(cache.chunksInFlight()).toBe(0);
      // the hung requests were cut at the deadline, not left to the transport's own timeout: an
      // answer that came later would be decoded and written after its read had failed
      await within(2000, proxy.stallsClosed(stalled), 'the client closing the hung connections');
    } finally {
      await proxy.refuse(); // cut the hung connections so that the cache can close
    }
  });
});

describe('connection dropped mid-body', () => {
  it('a retried read returns the right bytes; endless drops store nothing half-written', async () => {
    const { proxy, cache, disk } = await diskViaChaos({ fetchDeadlineMs: 1500 });
    const chunks = dataChunks(disk);
    const n = chunks[16] as number;
    proxy.dropMidBody(2);
    const data = await within(15_000, disk.read(n * CHUNK, 3 * CHUNK), 'read through dropped connections');
    expectImage(data, n * CHUNK, 3 * CHUNK);
    expect(proxy.count({ fault: 'drop' })).toBe(2);
    expect(proxy.count({ kind: 'blob', status: 206 })).toBeGreaterThanOrEqual(1);
    expect(expectTier1Consistent(cache).chunks).toBe(3);

    const m = chunks[30] as number;
    proxy.dropMidBody('all');
    const err = await rejection(within(20_000, disk.read(m * CHUNK, 2 * CHUNK), 'read against endless drops'));
    expect(err.code).toBe('REGISTRY_UNREACHABLE');
    // the answer is cut halfway, after chunk m's bytes: m is kept (whole and verified, as every
    // file is), m + 1 never came and has no file, half-written or other
    expect(existsSync(cache.chunkPath(chunkHex(disk, m)))).toBe(true);
    expect(existsSync(cache.chunkPath(chunkHex(disk, m + 1)))).toBe(false);
    expect(expectTier1Consistent(cache).chunks).toBe(4);
  });
});

describe('corrupted blobs in the registry', () => {
  it('the read fails with DIGEST_MISMATCH and nothing corrupted is stored or served', async () => {
    const { proxy, cache, disk } = await diskViaChaos({ fetchDeadlineMs: 5000 });
    const n = dataChunks(disk)[8] as number;
    proxy.corrupt();
    const t0 = Date.now();
    const err = await rejection(within(15_000, disk.read(n * CHUNK, 2 * CHUNK), 'read of a corrupted pack'));
    expect(err.code).toBe('DIGEST_MISMATCH');
    expect(Date.now() - t0).toBeLessThan(3000); // not retried until the deadline: wrong bytes are not transient
    expect(proxy.count({ fault: 'corrupt' })).toBeGreaterThanOrEqual(1);
    // asking again does not serve anything from a tier either
    expect((await rejection(disk.read(n * CHUNK + 5, 10))).code).toBe('DIGEST_MISMATCH');
    // a server that ignores Range and sends the whole (corrupted) pack: the pack is checked whole
    proxy.ignoreRange();
    expect((await rejection(disk.read(n * CHUNK, CHUNK))).code).toBe('DIGEST_MISMATCH');
    await disk.settle();
    expect(cache.stats().remote.wholeBlobResponses).toBe(0);
    expect(cache.stats().disk.chunks).toBe(0);
    expect(cache.stats().memory.chunks).toBe(0);
    expect(chunkFiles(cache.config.cacheDir)).toEqual([]);
    expect(tmpFiles(cache.config.cacheDir)).toEqual([]);

    proxy.passThrough();
    expectImage(await disk.read(n * CHUNK, 2 * CHUNK), n * CHUNK, 2 * CHUNK);
    expect(expectTier1Consistent(cache).chunks).toBe(2);
  });

  it('with a corrupting mirror and a good origin, the read succeeds from the origin', async () => {
    const origin = await chaos();
    const mirror = await chaos();
    mirror.corrupt();
    const { cache, logs } = await openCache({ cacheDir: freshDir(), fetchDeadlineMs: 5000, mirrors: { [origin.host]: [mirror.host] } });
    const disk = await cache.openDisk(refVia(origin.host));
    const n = dataChunks(disk)[25] as number;
    origin.clearLog();
    const data = await within(15_000, disk.read(n * CHUNK + 77, 2 * CHUNK), 'read with a bad mirror');
    expectImage(data, n * CHUNK + 77, 2 * CHUNK);
    // the mirror was asked first and sent bad bytes; the origin then served the run
    expect(mirror.count({ kind: 'blob', method: 'GET', ranged: true, fault: 'corrupt' })).toBeGreaterThanOrEqual(1);
    expect(origin.count({ kind: 'blob', method: 'GET', ranged: true, status: 206 })).toBe(1);
    expect(cache.stats().remote.badSources).toBe(1);
    const warning = logs.has('warn', 'chunk source failed; trying the next');
    expect(warning, logs.text).toBeDefined();
    expect(warning?.code).toBe('DIGEST_MISMATCH');
    expect(String(warning?.source)).toContain(mirror.host);
    expect(expectTier1Consistent(cache).chunks).toBe(3);
  });
});

describe('corrupted or lost chunk files in tier 1', () => {
  async function warmThenTamper(tamper: (path: string, size: number) => void): Promise<{ proxy: ChaosProxy; cacheDir: string; n: number; hex: string }> {
    const proxy = await chaos();
    const cacheDir = freshDir();
    const first = await openCache({ cacheDir });
    const disk = await first.cache.openDisk(refVia(proxy.host));
    const n = dataChunks(disk)[12] as number;
    await disk.read(n * CHUNK, CHUNK);
    const hex = chunkHex(disk, n);
    const path = join(cacheDir, 'chunks', hex.slice(0, 2), hex);
    expect(existsSync(path)).toBe(true);
    await first.cache.close();
    tamper(path, statSync(path).size);
    return { proxy, cacheDir, n, hex };
  }

  it('a chunk file overwritten with same-length garbage is detected, fetched again, served right', async () => {
    const { proxy, cacheDir, n, hex } = await warmThenTamper((path, size) => writeFileSync(path, randomBytes(size)));
    const { cache, logs } = await openCache({ cacheDir });
    const disk = await cache.openDisk(refVia(proxy.host));
    proxy.clearLog();
    expectImage(await disk.read(n * CHUNK, CHUNK), n * CHUNK, CHUNK);
    expect(cache.stats().disk.corruptions).toBe(1);
    expect(disk.stats.tier1Chunks).toBe(0);
    expect(disk.stats.tier2Chunks).toBe(1);
    expect(proxy.count({ kind: 'blob', ranged: true, status: 206 })).toBe(1);
    expect(logs.has('warn', 'cache chunk file corrupted; dropped, fetching it again')?.digest).toBe(hex);
    expect(expectTier1Consistent(cache).chunks).toBe(1);
  });

  it('a deleted chunk file is a miss: fetched again, served right, its row rewritten', async () => {
    const { proxy, cacheDir, n, hex } = await warmThenTamper((path) => rmSync(path));
    const { cache, logs } = await openCache({ cacheDir });
    expect(cache.stats().disk.chunks).toBe(1); // the row outlived its file
    const disk = await cache.openDisk(refVia(proxy.host));
    proxy.clearLog();
    expectImage(await disk.read(n * CHUNK + 10, CHUNK - 20), n * CHUNK + 10, CHUNK - 20);
    expect(disk.stats.tier2Chunks).toBe(1);
    expect(proxy.count({ kind: 'blob', ranged: true, status: 206 })).toBe(1);
    expect(logs.has('warn', 'cache chunk file missing; fetching it again')?.digest).toBe(hex);
    expect(expectTier1Consistent(cache).chunks).toBe(1);
  });
});

describe('a server that ignores Range', () => {
  it('reads are right and the rest of the pack it sent is kept in tier 1', async () => {
    const { proxy, cache, disk } = await diskViaChaos();
    const { index } = disk.artifact;
    // a chunk whose pack holds several chunks
    const byPack = new Map<number, number[]>();
    for (const n of dataChunks(disk)) {
      const pack = (index.entries[index.map[n] as number] as IndexEntry).pack;
      byPack.set(pack, [...(byPack.get(pack) ?? []), n]);
    }
    const [pack, members] = [...byPack].find(([, m]) => m.length >= 6) as [number, number[]];
    const n = members[2] as number;
    proxy.clearLog();
    proxy.ignoreRange();
    expectImage(await disk.read(n * CHUNK + 999, 3000), n * CHUNK + 999, 3000);
    await disk.settle();
    expect(proxy.count({ fault: 'ignore-range', status: 200 })).toBe(1);
    expect(cache.stats().remote.wholeBlobResponses).toBe(1);
    const entriesOfPack = index.entries.filter((e) => e.pack === pack).length;
    expect(entriesOfPack).toBe(members.length);
    expect(cache.stats().disk.chunks).toBe(entriesOfPack);
    expect(cache.stats().disk.chunks).toBeGreaterThan(1);
    expectTier1Consistent(cache);

    // the rest of the pack is now local: no request, right bytes (read backwards: no read is
    // sequential, so no readahead goes to the registry for chunks beyond the pack)
    proxy.clearLog();
    for (const m of [...members].reverse()) expectImage(await disk.read(m * CHUNK, CHUNK), m * CHUNK, CHUNK);
    await disk.settle();
    expect(proxy.count({ kind: 'blob' })).toBe(0);
    expect(disk.stats.tier1Chunks).toBe(members.length - 1);
    expect(index.packs[pack]?.digest).toBeDefined();
  });
});

describe('the cache disk full', () => {
  it('a small disk budget: the whole disk reads right in pieces and tier 1 stays within the budget', async () => {
    const budget = 4 * CHUNK;
    const { cache, logs } = await openCache({ cacheDir: freshDir(), diskBudgetBytes: budget, memoryBudgetBytes: 2 * CHUNK });
    const disk = await cache.openDisk(refVia(bed.registry.host), { pin: false });
    const piece = 100 * KiB + 512;
    let maxBytes = 0;
    for (let off = 0; off < DISK_BYTES; off += piece) {
      const len = Math.min(piece, DISK_BYTES - off);
      const got = await disk.read(off, len);
      expect(got.equals(expected(off, len)), `bytes at ${off}+${len}`).toBe(true);
      const s = cache.stats().disk;
      maxBytes = Math.max(maxBytes, s.bytes);
      expect(s.bytes).toBeLessThanOrEqual(budget);
    }
    expect(maxBytes).toBeGreaterThan(0);
    expect(logs.lines().filter((l) => l.msg === 'cache evicted chunks').length).toBeGreaterThan(5);
    // sequential reads start readahead: its chunks may still be on their way into tier 1
    await disk.settle();
    const { chunks } = expectTier1Consistent(cache);
    expect(chunks).toBeLessThanOrEqual(4);
    // every distinct chunk came over the wire at least once; none was kept past the budget
    expect(cache.stats().remote.chunks).toBeGreaterThanOrEqual(52);
  });

  it("an open disk's pinned chunks survive another cache's gc on the same dir, until it closes", async () => {
    const cacheDir = freshDir();
    const holder = await openCache({ cacheDir });
    const disk = await holder.cache.openDisk(refVia(bed.registry.host)); // pin is on by default
    await disk.prefetch();
    expect(expectTier1Consistent(holder.cache).chunks).toBe(52);
    expect(holder.cache.stats().disk.pinnedChunks).toBe(52);

    const other = await openCache({ cacheDir, diskBudgetBytes: 2 * CHUNK });
    expect(other.cache.stats().disk.holders).toBe(1);
    const ev = other.cache.gc();
    expect(ev.evictedChunks).toBe(0);
    expect(other.cache.gc(0).evictedChunks).toBe(0);
    expect(chunkFiles(cacheDir).length).toBe(52);
    expect(other.cache.stats().disk.chunks).toBe(52);
    // the holder still reads every chunk from tier 1
    const before = disk.stats.tier2Chunks;
    expect((await disk.read(0, DISK_BYTES)).equals(image)).toBe(true);
    expect(disk.stats.tier2Chunks).toBe(before);

    await disk.close();
    expect(other.cache.stats().disk.pinnedChunks).toBe(0);
    const after = other.cache.gc();
    expect(after.evictedChunks).toBeGreaterThanOrEqual(50);
    expect(other.cache.stats().disk.bytes).toBeLessThanOrEqual(Math.floor(2 * CHUNK * 0.8));
    expect(expectTier1Consistent(other.cache).chunks).toBeLessThanOrEqual(1);
  });

  describe('a really full file system (2 MiB tmpfs as the cache dir)', () => {
    const mnt = join(work, 'tmpfs');
    let mounted = false;
    let mountError = '';
    beforeAll(() => {
      mkdirSync(mnt, { recursive: true });
      try {
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt], { stdio: 'pipe' });
        mounted = true;
      } catch (err) {
        mountError = String((err as { stderr?: Buffer }).stderr ?? err);
      }
    });
    afterAll(() => {
      if (!mounted) return;
      try {
        execFileSync('umount', [mnt], { stdio: 'pipe' });
      } catch {
        execFileSync('umount', ['-l', mnt], { stdio: 'pipe' });
      }
    });

    it('ENOSPC: chunks are evicted to make room, every read is served right, nothing half-written stays', async (ctx) => {
      if (!mounted) {
        ctx.skip(`cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): ${mountError}`);
        return;
      }
      const cacheDir = join(mnt, 'cache');
      const { cache, logs } = await openCache({ cacheDir, memoryBudgetBytes: 2 * CHUNK });
      const disk = await cache.openDisk(refVia(bed.registry.host), { pin: false });
      const piece = 256 * KiB;
      for (let off = 0; off < DISK_BYTES; off += piece) {
        const got = await within(8000, disk.read(off, piece), `read at ${off} on a full disk`);
        expect(got.equals(expected(off, piece)), `bytes at ${off}`).toBe(true);
      }
      expect(logs.has('warn', 'cache disk full; evicting'), logs.text).toBeDefined();
      // eviction really made room: the last chunks read were kept, not just served
      const data = dataChunks(disk);
      const lastData = data[data.length - 1] as number;
      expect(cache.has(chunkHex(disk, lastData)), logs.text).toBe(true);
      // sequential reads start readahead: its chunks may still be on their way into tier 1
      await disk.settle();
      const { chunks } = expectTier1Consistent(cache);
      expect(chunks).toBeGreaterThan(0);
      expect(chunks).toBeLessThan(52);
      await cache.close();
    });
  });
});

describe('one cache dir shared by several processes', () => {
  interface Child {
    code: number | null;
    stdout: Buffer;
    stderr: string;
  }

  function slipway(args: string[]): Promise<Child> {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: work, XDG_CONFIG_HOME: join(work, 'no-config'), DOCKER_CONFIG: join(work, 'no-docker'), SLIPWAY_LOG_LEVEL: 'warn' };
    return new Promise((resolve) => {
      execFile(process.execPath, [join(process.cwd(), 'bin', 'slipway.js'), ...args], { env, encoding: 'buffer', maxBuffer: 64 * MiB, timeout: 30_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr: stderr.toString() });
      });
    });
  }

  function statsLine(stderr: string): { disk: { tier2Chunks: number; tier1Chunks: number }; cache: { remote: { chunks: number } } } {
    const line = stderr.split('\n').reverse().find((l) => l.startsWith('{"disk"'));
    if (!line) throw new Error(`no --stats line in: ${stderr}`);
    return JSON.parse(line) as { disk: { tier2Chunks: number; tier1Chunks: number }; cache: { remote: { chunks: number } } };
  }

  it('two reads and a prefetch of one cold disk at once all succeed; the index matches the files', async () => {
    const proxy = await chaos();
    // slow blob answers so that the three processes really fetch at the same time
    proxy.delay(300, 'blobs');
    const cacheDir = freshDir();
    const ref = refVia(proxy.host);
    const [a, b, c] = await Promise.all([
      slipway(['read', ref, '--offset', '0', '--length', String(DISK_BYTES), '--cache-dir', cacheDir, '--stats']),
      slipway(['read', ref, '--offset', String(DISK_BYTES / 2), '--length', String(DISK_BYTES / 2), '--cache-dir', cacheDir, '--stats']),
      slipway(['cache', 'prefetch', ref, '--cache-dir', cacheDir]),
    ]);
    expect(a?.code, a?.stderr).toBe(0);
    expect(b?.code, b?.stderr).toBe(0);
    expect(c?.code, c?.stderr).toBe(0);
    expect((a as Child).stdout.equals(image)).toBe(true);
    expect((b as Child).stdout.equals(image.subarray(DISK_BYTES / 2))).toBe(true);
    const prefetched = JSON.parse((c as Child).stdout.toString()) as { chunks: number; fetchedChunks: number };
    expect(prefetched.fetchedChunks).toBe(prefetched.chunks);
    // they raced, and shared the work: between them every chunk came from the registry exactly once
    const remoteOfPrefetch = (JSON.parse((c as Child).stdout.toString()) as { remote: { chunks: number } }).remote.chunks;
    const fetchedAll = statsLine((a as Child).stderr).cache.remote.chunks + statsLine((b as Child).stderr).cache.remote.chunks + remoteOfPrefetch;
    expect(fetchedAll).toBe(52);

    const stats = await slipway(['cache', 'stats', '--cache-dir', cacheDir]);
    expect(stats.code, stats.stderr).toBe(0);
    const s = JSON.parse(stats.stdout.toString()) as { disk: { chunks: number; bytes: number; pinnedChunks: number; holders: number } };
    const files = chunkFiles(cacheDir);
    expect(files.filter((f) => !f.intact)).toEqual([]);
    expect(files.length).toBe(52);
    expect(s.disk.chunks).toBe(files.length);
    expect(s.disk.bytes).toBe(files.reduce((sum, f) => sum + f.size, 0));
    expect(s.disk.pinnedChunks).toBe(0);
    expect(s.disk.holders).toBe(0);
    expect(tmpFiles(cacheDir)).toEqual([]);
  });
});
