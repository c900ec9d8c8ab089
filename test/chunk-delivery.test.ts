/**
 * How fetched chunks are handed over: each chunk of a coalesced request as soon as it is verified
 * (not when the whole request is), decoded at its own priority (a chunk a demand read waits for
 * before its neighbours), once however many retries it took; a boot profile's requests in the
 * order of first use; and a disk served to slipway-blk keeps nothing in memory (tier 0). The
 * remote tier and the fetcher are driven with a fake source and a decode the test releases chunk
 * by chunk, so nothing there depends on timing.
 */
import { describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { ChunkFetcher } from '../src/cache/chunk-fetcher.js';
import type { LazyDisk } from '../src/cache/lazy-disk.js';
import type { ChunkWant, GetChunksOptions } from '../src/cache/cache-types.js';
import { planProfileRuns, PROFILE_GAP_BYTES, PROFILE_RUN_BYTES } from '../src/cache/fetch-ahead.js';
import { planRuns, RemoteTier, type Run, type Source } from '../src/cache/remote-tier.js';
import { loadConfig } from '../src/config.js';
import { ChunkCodec } from '../src/disk/chunk-codec.js';
import type { ChunkIndex } from '../src/disk/format.js';
import { pushDisk } from '../src/disk/push.js';
import { parseRef } from '../src/oci/ref.js';
import { serveDisk } from '../src/serve/backend.js';
import type { RangeReadOptions, Target } from '../src/oci/store.js';
import type { Descriptor } from '../src/oci/types.js';
import { SlipwayError } from '../src/errors.js';
import { silentLogger } from '../src/util/log.js';
import { PrioritySemaphore, Urgency, type Priority } from '../src/util/semaphore.js';
import type { Decoded } from '../src/workers/pool.js';
import { within } from './helpers/cache-checks.js';
import { tempDir } from './helpers/images.js';
import { registryBed } from './helpers/registry-bed.js';

const CHUNK = 4096;

/** A one-pack disk of `count` raw (uncompressed) chunks, each `CHUNK` random bytes, back to back in its pack. */
function fakeDisk(count: number): { index: ChunkIndex; pack: Buffer; chunks: Buffer[] } {
  const chunks = Array.from({ length: count }, () => randomBytes(CHUNK));
  const pack = Buffer.concat(chunks);
  const desc: Descriptor = { mediaType: 'application/octet-stream', digest: `sha256:${createHash('sha256').update(pack).digest('hex')}`, size: pack.length };
  const index: ChunkIndex = {
    sizeBytes: count * CHUNK, chunkSizeBytes: CHUNK, chunkCount: count, packs: [desc],
    entries: chunks.map((c, i) => ({ digest: createHash('sha256').update(c).digest(), pack: 0, offset: i * CHUNK, storedLength: CHUNK, flags: 0 })),
    map: Uint32Array.from(chunks.keys()),
  };
  return { index, pack, chunks };
}

/** A source that serves ranges of `pack`, as `alter` leaves them. */
function fakeSource(name: string, pack: Buffer, alter: (bytes: Buffer, offset: number) => Buffer = (b) => b): Source {
  const target = { name, fetchBlobRange: async (_: Descriptor, offset: number, length: number) => alter(Buffer.from(pack.subarray(offset, offset + length)), offset) };
  return { target: target as unknown as Target, host: name };
}

/** A decode the test releases one chunk at a time (by chunk byte offset in the pack); it records the priority each waited at. */
/** A chunk's stored bytes in one buffer (the remote tier hands them over as the pieces they came in). */
const whole = (stored: Buffer | readonly Buffer[]): Buffer => (Buffer.isBuffer(stored) ? stored : Buffer.concat(stored));

function heldDecode(): { decode: (stored: Buffer | readonly Buffer[], flags: number, length: number, digest: Buffer, what: string, priority?: Priority | Urgency) => Promise<Decoded>; calls: { what: string; priority: Priority | Urgency | undefined }[]; release: (what: string) => void } {
  const codec = new ChunkCodec();
  const waiting = new Map<string, () => void>();
  const released = new Set<string>();
  const calls: { what: string; priority: Priority | Urgency | undefined }[] = [];
  return {
    calls,
    decode: async (stored, flags, length, digest, what, priority) => {
      const key = /chunk (\d+)/.exec(what)?.[1] as string;
      calls.push({ what: key, priority });
      if (!released.has(key)) await new Promise<void>((go) => waiting.set(key, go));
      return { data: codec.decode(whole(stored), flags, length, digest, what), length, persisted: false };
    },
    release: (key) => {
      released.add(key);
      waiting.get(key)?.();
    },
  };
}

const runOf = (index: ChunkIndex, chunks: number[]): Run => planRuns(index, chunks.map((n) => ({ entry: n, chunk: n })))[0] as Run;
const levelOf = (p: Priority | Urgency | undefined): Priority | undefined => (p instanceof Urgency ? p.priority : p);
/** Let promise callbacks run (the fake source answers at once). */
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 20));

describe('the remote tier hands chunks over one by one', () => {
  it('each chunk of a coalesced request as soon as it is verified, not when the whole request is', async () => {
    const { index, pack, chunks } = fakeDisk(4);
    const held = heldDecode();
    const remote = new RemoteTier({ decode: held.decode, logger: silentLogger, deadlineMs: 10_000, hostLimit: () => new PrioritySemaphore(8, 2) });
    const got: number[] = [];
    const run = runOf(index, [0, 1, 2, 3]);
    expect(run.chunks).toHaveLength(4);
    const whole = remote.fetchRun(index, run, [fakeSource('a', pack)], 'prefetch', 'disk', { onChunk: (w, c) => {
      expect(c.data.equals(chunks[w.chunk] as Buffer)).toBe(true);
      got.push(w.chunk);
    } });
    let done = false;
    void whole.then(() => (done = true));
    await settle();
    held.release('2');
    await settle();
    // chunk 2 is handed over while the other three are still being decoded
    expect(got).toEqual([2]);
    expect(done).toBe(false);
    for (const n of ['0', '1', '3']) held.release(n);
    const all = await whole;
    expect(got.sort()).toEqual([0, 1, 2, 3]);
    expect([...all.keys()].sort()).toEqual([0, 1, 2, 3]);
    expect(remote.stats.chunks).toBe(4);
  });

  it('a chunk verified before a retry is handed over once, and not decoded again', async () => {
    const { index, pack, chunks } = fakeDisk(4);
    const codec = new ChunkCodec();
    const decoded: number[] = [];
    const remote = new RemoteTier({
      decode: async (stored, flags, length, digest, what) => {
        decoded.push(Number(/chunk (\d+)/.exec(what)?.[1]));
        return { data: codec.decode(whole(stored), flags, length, digest, what), length, persisted: false };
      },
      logger: silentLogger, deadlineMs: 10_000, hostLimit: () => new PrioritySemaphore(8, 2),
    });
    // the first source sends chunk 3 wrong (a complete answer that fails verification): the
    // second is asked for the run again, and only chunk 3 is decoded again
    const bad = fakeSource('bad', pack, (b, offset) => {
      b.writeUInt8(b.readUInt8(3 * CHUNK - offset) ^ 0xff, 3 * CHUNK - offset);
      return b;
    });
    const handed: number[] = [];
    await remote.fetchRun(index, runOf(index, [0, 1, 2, 3]), [bad, fakeSource('good', pack)], 'demand', 'disk', { onChunk: (w, c) => {
      expect(c.data.equals(chunks[w.chunk] as Buffer)).toBe(true);
      handed.push(w.chunk);
    } });
    expect(handed.sort()).toEqual([0, 1, 2, 3]);
    expect(decoded.sort()).toEqual([0, 1, 2, 3, 3]);
    expect(remote.stats.badSources).toBe(1);
    expect(remote.stats.chunks).toBe(4);
  });
});

describe('the fetcher answers each reader as soon as its chunk is in', () => {
  it.each(['prefetch', 'background'] as const)('a demand read joining a %s of four chunks decodes that chunk first (its neighbours at prefetch priority) and is answered before them', async (fill) => {
    const { index, pack } = fakeDisk(4);
    const held = heldDecode();
    const sem = new PrioritySemaphore(8, 2);
    const remote = new RemoteTier({ decode: held.decode, logger: silentLogger, deadlineMs: 10_000, hostLimit: () => sem });
    const fetcher = new ChunkFetcher({
      cacheDir: tempDir('slipway-delivery-'), has: () => false, remote, logger: silentLogger, deadlineMs: 10_000,
      lookupLocal: () => undefined, store: async () => undefined, decode: held.decode,
    });
    const want = (n: number): ChunkWant => ({ entry: n, chunk: n, hex: (index.entries[n]?.digest as Buffer).toString('hex') });
    const call = (priority: Priority): GetChunksOptions => ({
      index, sources: [fakeSource('a', pack)], what: 'disk', priority, intoMemory: false,
      tally: { tier0Chunks: 0, tier1Chunks: 0, tier2Chunks: 0, guessChunks: 0, inflightJoins: 0 }, track: () => undefined,
    });
    const prefetch = fetcher.getChunks([0, 1, 2, 3].map(want), call(fill));
    const demandCall = call('demand');
    const demand = fetcher.getChunks([want(2)], demandCall);
    expect(demandCall.tally.inflightJoins).toBe(1);
    await settle();
    // one request for the four, each chunk decoded at its own priority: chunk 2 at demand, its
    // neighbours (likely read next) at prefetch priority, however low the fill's was
    expect(held.calls.map((c) => c.what).sort()).toEqual(['0', '1', '2', '3']);
    for (const c of held.calls) expect(levelOf(c.priority)).toBe(c.what === '2' ? 'demand' : 'prefetch');
    held.release('2');
    const [two] = await within(5_000, demand, 'the demand read of chunk 2');
    expect(two?.length).toBe(CHUNK);
    let prefetched = false;
    void prefetch.then(() => (prefetched = true));
    await settle();
    expect(prefetched).toBe(false);
    for (const n of ['0', '1', '3']) held.release(n);
    expect(await within(5_000, prefetch, 'the prefetch')).toHaveLength(4);
    fetcher.close();
  });
});

describe('guesses riding along with a miss', () => {
  it('are kept undecoded; one that does not verify when read is fetched again, from a source that has it right', async () => {
    const { index, pack, chunks } = fakeDisk(4);
    const codec = new ChunkCodec();
    const decoded: string[] = [];
    const decode = async (stored: Buffer | readonly Buffer[], flags: number, length: number, digest: Buffer, what: string): Promise<Decoded> => {
      decoded.push(what);
      return { data: codec.decode(whole(stored), flags, length, digest, what), length, persisted: false };
    };
    const remote = new RemoteTier({ decode, logger: silentLogger, deadlineMs: 10_000, hostLimit: () => new PrioritySemaphore(8, 2) });
    const kept = new Map<string, Buffer>();
    const fetcher = new ChunkFetcher({
      cacheDir: tempDir('slipway-guess-'), has: (hex) => kept.has(hex), remote, logger: silentLogger, deadlineMs: 10_000,
      lookupLocal: (hex) => (kept.has(hex) ? { data: kept.get(hex) as Buffer, tier: 1 } : undefined),
      store: async (hex, chunk) => void kept.set(hex, chunk.data), decode,
    });
    const want = (n: number): ChunkWant => ({ entry: n, chunk: n, hex: (index.entries[n]?.digest as Buffer).toString('hex') });
    // the first source sends chunk 2 wrong: a complete answer whose chunk 2 fails verification
    const bad = fakeSource('bad', pack, (b, offset) => {
      if (offset <= 2 * CHUNK && offset + b.length > 2 * CHUNK) b.writeUInt8(b.readUInt8(2 * CHUNK - offset) ^ 0xff, 2 * CHUNK - offset);
      return b;
    });
    const tally = { tier0Chunks: 0, tier1Chunks: 0, tier2Chunks: 0, guessChunks: 0, inflightJoins: 0 };
    const call = (alongside?: GetChunksOptions['alongside']): GetChunksOptions => ({
      index, sources: [bad, fakeSource('good', pack)], what: 'disk', priority: 'demand', intoMemory: false, tally, track: () => undefined, ...(alongside ? { alongside } : {}),
    });
    // a miss of chunk 0 takes 1..3 along: one request, chunk 0 decoded, the guesses kept as they came
    const [zero] = await within(5_000, fetcher.getChunks([want(0)], call(() => [1, 2, 3].map(want))), 'the miss of chunk 0');
    expect(zero?.equals(chunks[0] as Buffer)).toBe(true);
    expect(remote.stats).toMatchObject({ requests: 1, chunks: 1, guesses: 3 });
    expect(fetcher.parked.stats()).toMatchObject({ held: 3, parked: 3 });
    expect(decoded).toHaveLength(1);
    // read, each guess is decoded then; chunk 2's wrong bytes are found and it is fetched again
    for (const n of [1, 2, 3]) {
      const [got] = await within(5_000, fetcher.getChunks([want(n)], call()), `the read of guess ${n}`);
      expect(got?.equals(chunks[n] as Buffer), `chunk ${n}`).toBe(true);
    }
    expect(tally.guessChunks).toBe(2);
    expect(remote.stats.requests).toBeGreaterThanOrEqual(2);
    expect(remote.stats.badSources).toBe(1);
    expect(fetcher.parked.stats()).toMatchObject({ held: 0, taken: 3 });
    for (const n of [0, 1, 2, 3]) expect(kept.get(want(n).hex)?.equals(chunks[n] as Buffer)).toBe(true);
    fetcher.close();
  });
});

describe('a run given up on at its deadline', () => {
  it('cuts its request; an answer that comes anyway is dropped, and a newer fetch of the same chunk is left alone', async () => {
    const { index, pack, chunks } = fakeDisk(1);
    const codec = new ChunkCodec();
    let decodes = 0;
    const decode = async (stored: Buffer | readonly Buffer[], flags: number, length: number, digest: Buffer, what: string): Promise<Decoded> => {
      decodes++;
      return { data: codec.decode(whole(stored), flags, length, digest, what), length, persisted: false };
    };
    const remote = new RemoteTier({ decode, logger: silentLogger, deadlineMs: 300, hostLimit: () => new PrioritySemaphore(8, 2) });
    const kept = new Map<string, Buffer>();
    const fetcher = new ChunkFetcher({
      cacheDir: tempDir('slipway-late-'), has: (hex) => kept.has(hex), remote, logger: silentLogger, deadlineMs: 300,
      lookupLocal: () => undefined, store: async (hex, chunk) => void kept.set(hex, chunk.data), decode,
    });
    // every answer is held until the test lets it go, then sent right, whether or not its request
    // was aborted (a store that ignores the signal, as one reading local files may)
    const gates: (() => void)[] = [];
    const signals: (AbortSignal | undefined)[] = [];
    const held: Source = { host: 'slow', target: { name: 'slow', fetchBlobRange: async (_: Descriptor, offset: number, length: number, opts?: RangeReadOptions) => {
      signals.push(opts?.signal);
      await new Promise<void>((go) => gates.push(go));
      return Buffer.from(pack.subarray(offset, offset + length));
    } } as unknown as Target };
    const want: ChunkWant = { entry: 0, chunk: 0, hex: (index.entries[0]?.digest as Buffer).toString('hex') };
    const call = (): GetChunksOptions => ({
      index, sources: [held], what: 'disk', priority: 'demand', intoMemory: false, tally: { tier0Chunks: 0, tier1Chunks: 0, tier2Chunks: 0, guessChunks: 0, inflightJoins: 0 }, track: () => undefined,
    });
    // the first fetch gives up at its deadline, and aborts its request with the same error
    const first = await fetcher.getChunks([want], call()).then(() => undefined, (e: unknown) => e);
    expect((first as SlipwayError).code).toBe('REGISTRY_UNREACHABLE');
    expect(signals[0]?.aborted).toBe(true);
    expect((signals[0]?.reason as SlipwayError).code).toBe('REGISTRY_UNREACHABLE');
    // a second one starts
    const second = fetcher.getChunks([want], call());
    await within(5_000, (async () => { while (gates.length < 2) await settle(); })(), 'the second request');
    expect(signals[1]?.aborted).toBe(false);
    // the first request's answer comes now (what follows it is promise callbacks only: a turn of
    // the event loop runs them all): it is not decoded, nor kept, and the second fetch goes on
    (gates.shift() as () => void)();
    await new Promise<void>((r) => setImmediate(r));
    expect(decodes).toBe(0);
    expect(kept.has(want.hex)).toBe(false);
    expect(fetcher.isFetching(want.hex)).toBe(true);
    (gates.shift() as () => void)();
    const [got] = await within(5_000, second, 'the second fetch');
    expect(got?.equals(chunks[0] as Buffer)).toBe(true);
    expect(decodes).toBe(1);
    expect(kept.has(want.hex)).toBe(true);
    expect(fetcher.isFetching(want.hex)).toBe(false);
    fetcher.close();
  });
});

describe('boot-profile requests', () => {
  /** `count` chunks of 100 kB back to back in one pack */
  const onePack = (count: number): ChunkIndex => ({
    sizeBytes: count * CHUNK, chunkSizeBytes: CHUNK, chunkCount: count, packs: [{ mediaType: 'x', digest: `sha256:${'0'.repeat(64)}`, size: count * 100_000 }],
    entries: Array.from({ length: count }, (_, i) => ({ digest: Buffer.alloc(32, i), pack: 0, offset: i * 100_000, storedLength: 100_000, flags: 0 })),
    map: Uint32Array.from({ length: count }, (_, i) => i),
  });
  const wants = (chunks: number[]) => chunks.map((n) => ({ entry: n, chunk: n }));

  it('go in order of first use, each request\'s chunks in profile order', () => {
    const index = onePack(60);
    // 0..11 lie within 512 KiB of each other (one request), 50 and 55 too; the two are 3.8 MB apart
    const runs = planProfileRuns(index, wants([50, 1, 0, 9, 3, 11, 55]));
    expect(runs.map((r) => r.chunks.map((w) => w.chunk))).toEqual([[50, 55], [1, 0, 9, 3, 11]]);
    expect(runs.map((r) => [r.start, r.length])).toEqual([[5_000_000, 600_000], [0, 1_200_000]]);
    // with the small bounds a prefetch of chunks in a given order uses, only neighbours share a request
    const small = planProfileRuns(index, wants([7, 1, 0, 9, 3, 11, 6]), 1 << 20, 64 << 10);
    expect(small.map((r) => r.chunks.map((w) => w.chunk))).toEqual([[7, 6], [1, 0], [9], [3], [11]]);
    // the same requests as plain coalescing makes: only their order and the decode order differ
    expect(small.map((r) => `${r.start}+${r.length}`).sort()).toEqual(planRuns(index, wants([7, 1, 0, 9, 3, 11, 6]), 1 << 20).map((r) => `${r.start}+${r.length}`).sort());
  });

  it('are coalesced across gaps of up to PROFILE_GAP_BYTES, never longer than PROFILE_RUN_BYTES', () => {
    const index = onePack(100);
    // every other chunk of the first 80: 100 kB gaps, one request per 4 MiB
    const profile = Array.from({ length: 40 }, (_, i) => 2 * i);
    const runs = planProfileRuns(index, wants(profile));
    expect(runs.length).toBe(2);
    for (const r of runs) expect(r.length).toBeLessThanOrEqual(PROFILE_RUN_BYTES);
    expect(runs.flatMap((r) => r.chunks.map((w) => w.chunk))).toEqual(profile);
    // a gap wider than PROFILE_GAP_BYTES splits
    const gap = Math.ceil(PROFILE_GAP_BYTES / 100_000) + 1;
    expect(planProfileRuns(index, wants([0, 1 + gap])).length).toBe(2);
    expect(planProfileRuns(index, wants([0, gap - 1])).length).toBe(1);
  });
});

describe('a disk served to slipway-blk', () => {
  const bed = registryBed();

  it('keeps no chunk in memory (tier 0): the backend reads tier-1 files; a disk opened for reads does', async () => {
    const work = tempDir('slipway-delivery-mem-');
    const file = join(work, 'disk.img');
    writeFileSync(file, randomBytes(4 * 65536));
    const ref = `${bed.registry.host}/delivery/mem:v1`;
    await pushDisk({ file, target: await bed.targets.open(parseRef(ref)), tag: 'v1', pool: bed.pool, chunkSizeBytes: 65536 });
    const openCache = (): Promise<ChunkCache> => ChunkCache.open({ config: loadConfig({}, { cacheDir: tempDir('slipway-delivery-cache-') }), logger: silentLogger, pool: bed.pool, targets: bed.targets });
    // what the miss server does for a miss, and a boot profile's prefetch
    const missAndPrefetch = async (disk: LazyDisk): Promise<void> => {
      await disk.readChunk(1);
      await disk.prefetch({ priority: 'prefetch', chunks: [2, 3] });
    };
    const served = await openCache();
    try {
      const s = await serveDisk({ cache: served, ref, socket: join(work, 'blk.sock'), workDir: join(work, 'serve'), readWrite: false, prefetch: 'none' });
      try {
        await missAndPrefetch(s.disk);
        expect(served.stats().disk.chunks).toBe(3);
        expect(served.stats().memory.chunks).toBe(0);
      } finally {
        await s.close();
      }
    } finally {
      await served.close();
    }
    const reading = await openCache();
    try {
      await missAndPrefetch(await reading.openDisk(ref, { useProfile: false }));
      expect(reading.stats().disk.chunks).toBe(3);
      expect(reading.stats().memory.chunks).toBe(3);
    } finally {
      await reading.close();
    }
  });
});
