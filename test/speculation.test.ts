/**
 * Speculative fetch and the per-host request bound: a demand miss is never queued behind
 * speculation or prefetch. A real docker-registry behind a gate that holds blob GETs (received,
 * not answered) until the test opens it: the test sees which requests a disk has on the wire at
 * one moment, with no timing at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import type { LazyDisk } from '../src/cache/lazy-disk.js';
import { main } from '../src/cli/main.js';
import { loadConfig } from '../src/config.js';
import type { IndexEntry } from '../src/disk/format.js';
import { DENSE_REGION_BOUNDS, GUESS_PROBATION, SPECULATION_WINDOWS } from '../src/cache/fetch-ahead.js';
import { silentLogger } from '../src/util/log.js';
import { captureIO } from './helpers/cli.js';
import { within } from './helpers/cache-checks.js';
import { startGateProxy, type GatedRequest, type GateProxy } from './helpers/gate-proxy.js';
import { tempDir } from './helpers/images.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';

const work = tempDir('slipway-spec-');
let registry: TestRegistry;
const CHUNK = 64 << 10;
/** 16 MiB of random bytes in 64 KiB chunks: 256 chunks, each stored as its own bytes (incompressible) */
const DISK_BYTES = 16 << 20;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  registry = await startRegistry();
  const file = join(work, 'disk.img');
  writeFileSync(file, randomBytes(DISK_BYTES));
  const io = captureIO();
  expect(await main(['push', file, `${registry.host}/spec/disk:v1`, '--chunk-size', '64K', '--progress=none'], io), io.err).toBe(0);
  // the same bytes in 16 KiB chunks: 1024 of them, for a reader that guessing does not help
  expect(await main(['push', file, `${registry.host}/spec/disk16:v1`, '--chunk-size', '16K', '--progress=none'], io), io.err).toBe(0);
}, 60_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await registry?.stop();
});

/** The hex digest of chunk `n`'s content (its tier-1 file's name). */
function chunkHexOf(disk: LazyDisk, n: number): string {
  const { index } = disk.artifact;
  return (index.entries[index.map[n] as number] as IndexEntry).digest.toString('hex');
}

/** The Range header of the request that fetches chunk `n` alone (its stored bytes in its pack). */
function rangeOf(disk: LazyDisk, n: number): { pack: string; range: string } {
  const { index } = disk.artifact;
  const e = index.entries[index.map[n] as number] as IndexEntry;
  return { pack: (index.packs[e.pack] as { digest: string }).digest, range: `bytes=${e.offset}-${e.offset + e.storedLength - 1}` };
}

/**
 * A cache on a fresh directory and the disk opened through a gate that holds every chunk request
 * but those that fetch chunk `a` alone, or one of `alsoPass` alone.
 */
async function gatedDisk(a: number, opts: { alsoPass?: number[]; speculate?: boolean } = {}): Promise<{ cache: ChunkCache; disk: LazyDisk; gate: GateProxy; isA: (r: GatedRequest) => boolean }> {
  // the chunk's place in its pack is known once the disk is open: open it directly first
  const probeCache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-spec-probe-') }), logger: silentLogger });
  const probe = await probeCache.openDisk(`${registry.host}/spec/disk:v1`, { useProfile: false, pin: false });
  const want = rangeOf(probe, a);
  const passing = new Set((opts.alsoPass ?? []).map((n) => JSON.stringify(rangeOf(probe, n))));
  await probeCache.close();
  // chunk A's request: A alone, or A and the guesses riding along (those before it first): it
  // covers A's bytes (and is no longer than a miss's own request may be)
  const span = (range: string | undefined): [number, number] => (/^bytes=(\d+)-(\d+)$/.exec(range ?? '') ?? []).slice(1).map(Number) as [number, number];
  const [aFrom, aTo] = span(want.range);
  const isA = (r: GatedRequest): boolean => {
    const [from, to] = span(r.range);
    return r.path.endsWith(want.pack) && from <= aFrom && to >= aTo && to - from < (SPECULATION_WINDOWS.max + SPECULATION_WINDOWS.back + 1) * CHUNK;
  };
  const gate = await startGateProxy(registry.host, (r) => isA(r) || passing.has(JSON.stringify({ pack: r.path.split('/').at(-1), range: r.range })));
  const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-spec-cache-') }), logger: silentLogger });
  const disk = await cache.openDisk(`${gate.host}/spec/disk:v1`, { useProfile: false, speculate: opts.speculate === true });
  cleanups.push(async () => {
    gate.open();
    await cache.close();
    await gate.stop();
  });
  return { cache, disk, gate, isA };
}

/** Resolves once `count` requests are held at the gate. */
async function heldRequests(gate: GateProxy, count: number): Promise<void> {
  await gate.arrived(() => gate.requests.filter((r) => r.held).length >= count);
}

describe('a demand miss is never queued behind speculation or prefetch', () => {
  it('a read of chunk A goes out while a prefetch of many other chunks holds every connection it may', async () => {
    const a = 200;
    const { cache, disk, gate, isA } = await gatedDisk(a);
    const limit = cache.config.connectionsPerHost;
    // B..Z: every chunk but A, in 1 MiB requests, 64 at a time: far more than the host's bound
    const others = [...Array(DISK_BYTES / CHUNK).keys()].filter((n) => n !== a);
    const prefetch = disk.prefetch({ priority: 'prefetch', chunks: others, concurrency: 64 });
    // the prefetch's requests on the wire (held) and the rest queued for a connection
    await heldRequests(gate, limit - 2);
    const sem = cache.hostLimit(gate.host);
    expect(sem.queued).toBeGreaterThan(0);
    const read = disk.readChunk(a);
    // A's request reaches the registry while every prefetch request is still unanswered: its
    // latency is one request's time, not one plus the prefetch's
    const got = await within(10_000, gate.arrived(isA), "chunk A's request");
    expect(got.held).toBe(false);
    expect(gate.requests.filter((r) => r.held).length).toBeGreaterThanOrEqual(limit - 2);
    expect((await within(10_000, read, 'the read of chunk A')).byteLength).toBe(CHUNK);
    gate.open();
    await prefetch;
  }, 60_000);
});

describe('speculative fetch', () => {
  it('rides along with the miss it follows: one request fetches the missed chunk and the guesses around it, which are then local', async () => {
    const m = 100;
    const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-spec-fold-') }), logger: silentLogger });
    const probe = await cache.openDisk(`${registry.host}/spec/disk:v1`, { useProfile: false, pin: false });
    const span = (n: number): { pack: string; start: number; end: number } => {
      const { index } = probe.artifact;
      const e = index.entries[index.map[n] as number] as IndexEntry;
      return { pack: (index.packs[e.pack] as { digest: string }).digest, start: e.offset, end: e.offset + e.storedLength - 1 };
    };
    const want = span(m);
    const bounds = (r: GatedRequest): [number, number] => (/^bytes=(\d+)-(\d+)$/.exec(r.range ?? '') ?? []).slice(1).map(Number) as [number, number];
    // the gate passes a request that covers chunk m's bytes, and holds any other
    const covers = (r: GatedRequest): boolean => r.path.endsWith(want.pack) && bounds(r)[0] <= want.start && bounds(r)[1] >= want.end;
    const gate = await startGateProxy(registry.host, covers);
    await probe.close();
    const disk = await cache.openDisk(`${gate.host}/spec/disk:v1`, { useProfile: false, speculate: true });
    cleanups.push(async () => {
      gate.open();
      await cache.close();
      await gate.stop();
    });
    expect((await within(10_000, disk.readChunk(m), `the read of chunk ${m}`)).byteLength).toBe(CHUNK);
    await disk.settle();
    // one request, not one for the miss and more for its guesses: none was held
    expect(gate.requests).toHaveLength(1);
    expect(gate.requests[0]?.held).toBe(false);
    // it carried the guesses (a new stream: the first window's chunks after it, and the chunks
    // just before it, whose bytes come first)
    const { min, back } = SPECULATION_WINDOWS;
    const w = min + back;
    expect(disk.stats.speculatedChunks).toBe(w);
    const [from, to] = bounds(gate.requests[0] as GatedRequest);
    expect(span(m - back).pack).toBe(want.pack);
    expect(from).toBe(span(m - back).start);
    expect(to).toBeGreaterThanOrEqual(span(m + min).end);
    // kept as they came, undecoded, until read: no file yet
    const guesses = [...Array.from({ length: min }, (_, i) => m + 1 + i), ...Array.from({ length: back }, (_, i) => m - back + i)];
    expect(cache.stats().guesses).toMatchObject({ held: w, parked: w, taken: 0 });
    for (const n of guesses) expect(existsSync(cache.chunkPath(chunkHexOf(disk, n)))).toBe(false);
    const remote = cache.stats().remote.requests;
    const image = readFileSync(join(work, 'disk.img'));
    for (const n of guesses) expect((await disk.readChunk(n)).equals(image.subarray(n * CHUNK, (n + 1) * CHUNK))).toBe(true);
    // each decoded (and verified) when read, and kept in tier 1 then; no request more
    expect(cache.stats().guesses).toMatchObject({ held: 0, taken: w });
    for (const n of guesses) expect(existsSync(cache.chunkPath(chunkHexOf(disk, n)))).toBe(true);
    expect(cache.stats().remote.requests).toBe(remote);
    expect(gate.requests).toHaveLength(1);
  }, 60_000);

  it('in requests of its own (after a read that joined a fetch on the wire) never delays a demand miss', async () => {
    const a = 250;
    const { cache, disk, gate, isA } = await gatedDisk(a, { speculate: true });
    const limit = cache.config.connectionsPerHost;
    const sem = cache.hostLimit(gate.host);
    // a prefetch of chunks far apart (one request each) holds every connection it may, held at the gate
    const far = Array.from({ length: limit }, (_, i) => 10 + 20 * i);
    const prefetch = disk.prefetch({ priority: 'prefetch', chunks: far, concurrency: limit });
    await heldRequests(gate, limit - 2);
    const onWire = far.filter((n) => gate.requests.some((r) => r.held && JSON.stringify({ pack: r.path.split('/').at(-1), range: r.range }) === JSON.stringify(rangeOf(disk, n))));
    expect(onWire.length).toBe(limit - 2);
    // demand reads of three of them join those fetches; the guesses after each go in requests of
    // their own, at prefetch priority: they queue, as the rest of the prefetch does
    const queuedBefore = sem.queued;
    const joins = onWire.slice(0, 3).map((n) => disk.readChunk(n));
    expect(disk.stats.inflightJoins).toBe(3);
    expect(disk.stats.speculatedChunks).toBeGreaterThan(0);
    expect(sem.queued).toBeGreaterThan(queuedBefore);
    // A's request goes out at once, on a connection kept for demand
    const read = disk.readChunk(a);
    expect((await within(10_000, gate.arrived(isA), "chunk A's request")).held).toBe(false);
    expect((await within(10_000, read, 'the read of chunk A')).byteLength).toBe(CHUNK);
    gate.open();
    for (const j of joins) expect((await within(10_000, j, 'a joined read')).byteLength).toBe(CHUNK);
    await prefetch;
    await disk.settle();
  }, 60_000);

  it('follows a sequential reader with a growing window; a recorded profile lists the guesses the reader read, not the others', async () => {
    const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-spec-seq-') }), logger: silentLogger });
    cleanups.push(() => cache.close());
    const disk = await cache.openDisk(`${registry.host}/spec/disk:v1`, { useProfile: false, speculate: true, recordProfile: true });
    // chunks 0..63 one at a time, as a guest reads a file, speculation settled between reads
    const missed: number[] = [];
    for (let n = 0; n < 64; n++) {
      const local = disk.stats.tier0Chunks + disk.stats.tier1Chunks + disk.stats.guessChunks;
      await disk.readChunk(n);
      if (disk.stats.tier0Chunks + disk.stats.tier1Chunks + disk.stats.guessChunks === local) missed.push(n);
      await disk.settle();
    }
    // each miss past a window doubles it (8, 16, then 20 at most): far fewer misses than reads
    // (and too far apart for a dense region)
    const expected: number[] = [];
    for (let n = 0, w = SPECULATION_WINDOWS.min; n < 64; n += 1 + w, w = Math.min(SPECULATION_WINDOWS.max, 2 * w)) expected.push(n);
    expect(expected).toEqual([0, 9, 26, 47]);
    expect(missed).toEqual(expected);
    // what was fetched beyond the reads is at most one window
    const fetched = cache.stats().remote.chunks + cache.stats().remote.guesses;
    expect(fetched).toBeGreaterThan(64);
    expect(fetched).toBeLessThanOrEqual(64 + SPECULATION_WINDOWS.max);
    // the profile is what was read, in order: the guesses past chunk 63, never read, are not in it
    const saved = await disk.saveProfile();
    expect(saved?.chunks).toBe(64);
    expect(disk.stats.speculatedRead).toBe(64 - missed.length);
  }, 60_000);

  it('fetches a dense region as guesses once misses lie close together, in requests of their own that never delay a demand miss', async () => {
    // three misses within the reach: 40, 60 (a new stream), 50 (in the first one's window)
    const misses = [40, 60, 50];
    const a = 200;
    const probeCache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-spec-dense-probe-') }), logger: silentLogger });
    const probe = await probeCache.openDisk(`${registry.host}/spec/disk:v1`, { useProfile: false, pin: false });
    const startOf = (n: number): string => `bytes=${(probe.artifact.index.entries[probe.artifact.index.map[n] as number] as IndexEntry).offset}-`;
    // a miss's request starts at the chunks before it when it starts a stream (40, 60 and A)
    const passing = [...misses, a].flatMap((n) => [startOf(n), startOf(n - SPECULATION_WINDOWS.back)]);
    const regionStart = startOf(40 - DENSE_REGION_BOUNDS.margin);
    expect(passing).not.toContain(regionStart);
    await probeCache.close();
    // requests that start at a missed chunk (it and the guesses riding along) or at A pass; the rest are held
    const gate = await startGateProxy(registry.host, (r) => passing.some((p) => (r.range ?? '').startsWith(p)));
    const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-spec-dense-') }), logger: silentLogger });
    const disk = await cache.openDisk(`${gate.host}/spec/disk:v1`, { useProfile: false, speculate: true });
    cleanups.push(async () => {
      gate.open();
      await cache.close();
      await gate.stop();
    });
    // a prefetch of chunks far from all of these holds every connection prefetch may, held at the gate
    const limit = cache.config.connectionsPerHost;
    const sem = cache.hostLimit(gate.host);
    const far = Array.from({ length: limit }, (_, i) => 130 + 8 * i);
    const prefetch = disk.prefetch({ priority: 'prefetch', chunks: far, concurrency: limit });
    await heldRequests(gate, limit - 2);
    for (const n of misses.slice(0, 2)) await within(10_000, disk.readChunk(n), `the read of chunk ${n}`);
    // two misses: nothing but the misses and the guesses riding along with them (on demand's connections)
    expect(disk.stats.regionChunks).toBe(0);
    const queuedBefore = sem.queued;
    await within(10_000, disk.readChunk(misses[2] as number), 'the third read');
    // the third makes the region dense: its chunks not yet local or in flight (the margin before
    // the first miss among them) are asked for in requests of their own, at prefetch priority:
    // they queue behind the prefetch, and leave the connections kept for demand alone
    expect(disk.stats.regionChunks).toBeGreaterThanOrEqual(DENSE_REGION_BOUNDS.margin);
    expect(sem.queued).toBeGreaterThan(queuedBefore);
    expect(gate.requests.some((r) => (r.range ?? '').startsWith(regionStart))).toBe(false);
    // a demand miss elsewhere goes out at once and is answered while the region waits
    const read = disk.readChunk(a);
    const got = await within(10_000, gate.arrived((r) => (r.range ?? '').startsWith(startOf(a - SPECULATION_WINDOWS.back))), "chunk A's request");
    expect(got.held).toBe(false);
    expect((await within(10_000, read, 'the read of chunk A')).byteLength).toBe(CHUNK);
    gate.open();
    await prefetch;
    await disk.settle();
    expect(gate.requests.some((r) => (r.range ?? '').startsWith(regionStart))).toBe(true);
    // the region's chunks came as guesses, undecoded (no file) until read; reading one makes no request
    const before = cache.stats().remote.requests;
    const m = 40 - DENSE_REGION_BOUNDS.margin;
    expect(existsSync(cache.chunkPath(chunkHexOf(disk, m)))).toBe(false);
    expect(cache.stats().guesses.held).toBeGreaterThanOrEqual(DENSE_REGION_BOUNDS.margin);
    const image = readFileSync(join(work, 'disk.img'));
    const regionRead = disk.stats.regionRead;
    expect(disk.stats.regionChunks).toBeGreaterThanOrEqual(DENSE_REGION_BOUNDS.margin);
    expect((await disk.readChunk(m)).equals(image.subarray(m * CHUNK, (m + 1) * CHUNK))).toBe(true);
    expect(cache.stats().remote.requests).toBe(before);
    expect(existsSync(cache.chunkPath(chunkHexOf(disk, m)))).toBe(true);
    // counted as a region's guess read (what stops regions that do not pay), once
    expect(disk.stats.regionRead).toBe(regionRead + 1);
    await disk.readChunk(m);
    expect(disk.stats.regionRead).toBe(regionRead + 1);
  }, 60_000);

  it('stops guessing for a reader it does not help: reads far apart, none of the guesses read', async () => {
    const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-spec-yield-') }), logger: silentLogger });
    cleanups.push(() => cache.close());
    const disk = await cache.openDisk(`${registry.host}/spec/disk16:v1`, { useProfile: false, speculate: true });
    // every 40th chunk: past each miss's window, too far apart for a dense region
    const reads = Array.from({ length: 25 }, (_, i) => 40 * i);
    const grew: number[] = [];
    for (const n of reads) {
      const before = disk.stats.speculatedChunks;
      await disk.readChunk(n);
      await disk.settle();
      grew.push(disk.stats.speculatedChunks - before);
    }
    // each miss guessed a window (and the chunks before it, but before chunk 0) until
    // GUESS_PROBATION chunks were guessed, none read: then none
    let total = 0;
    const expected = reads.map((n) => {
      if (total >= GUESS_PROBATION) return 0;
      const k = SPECULATION_WINDOWS.min + Math.min(SPECULATION_WINDOWS.back, n);
      total += k;
      return k;
    });
    expect(expected.filter((k) => k > 0).length).toBeLessThan(reads.length);
    expect(grew).toEqual(expected);
    expect(disk.stats.regionChunks).toBe(0);
    // once one in eight of the guesses has been read (the chunks after the first misses, held
    // undecoded: no request), a new miss is guessed for again
    const requests = cache.stats().remote.requests;
    const guessed = reads.filter((_, i) => (expected[i] as number) > 0).flatMap((n) => [n + 1, n + 2]).slice(0, Math.ceil(total / 8));
    for (const n of guessed) await disk.readChunk(n);
    expect(cache.stats().remote.requests).toBe(requests);
    const before = disk.stats.speculatedChunks;
    await disk.readChunk(1010);
    expect(disk.stats.speculatedChunks - before).toBe(SPECULATION_WINDOWS.min + SPECULATION_WINDOWS.back);
  }, 60_000);
});
