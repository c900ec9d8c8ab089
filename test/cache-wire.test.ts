/**
 * The chunk cache on a bad wire, through the real docker-registry behind the chaos proxy: a link
 * that cuts blob answers short (however the cut is framed, with Range honoured or ignored) is a
 * retry, never corruption; and the fetch deadline counts time on the wire, not time queued behind
 * other requests to the same host.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { IndexEntry } from '../src/disk/format.js';
import { pushDisk } from '../src/disk/push.js';
import { parseRef } from '../src/oci/ref.js';
import { chunkCacheBed } from './helpers/cache-bed.js';
import { chunkFiles, expectTier1Consistent, within } from './helpers/cache-checks.js';
import type { CutFraming } from './helpers/chaos-proxy.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const REPO = 'wire/disk';
const TAG = 'v1';
/** a disk that looks like one: zstd halves it, so chunks are compressed and a cut one is not a valid frame */
const DISK_BYTES = 32 * MiB;

const bed = chunkCacheBed('slipway-cache-wire-');
const { targets, work, freshDir, openCache, chaos } = bed;
let image: Buffer;
let chunkCount = 0;
/** a second disk of random 64 KiB chunks in 512 KiB packs: 128 chunks, every third one its own request */
const QUEUE_REPO = 'wire/queue';
const QUEUE_CHUNK = 64 * KiB;
let queueImage: Buffer;

/** Half random, half repeated text in every 64 KiB: compressible about 2:1, like a real root disk. */
function diskLikeImage(bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let off = 0; off < bytes; off += 64 * KiB) {
    randomBytes(32 * KiB).copy(out, off);
    out.fill(`block at ${off}; `, off + 32 * KiB, Math.min(bytes, off + 64 * KiB));
  }
  return out;
}

beforeAll(async () => {
  image = diskLikeImage(DISK_BYTES);
  const file = join(work, 'disk.img');
  writeFileSync(file, image);
  const target = await targets.open(parseRef(`${bed.registry.host}/${REPO}:${TAG}`));
  // default chunk (512 KiB) and pack (8 MiB) sizes: a whole-disk read is a few 8 MiB Range GETs
  const pushed = await pushDisk({ file, target, tag: TAG, pool: bed.pool });
  chunkCount = pushed.config.stats.uniqueChunks;
  expect(chunkCount).toBe(DISK_BYTES / (512 * KiB));
  expect(pushed.config.stats.packs).toBeGreaterThanOrEqual(2);

  queueImage = randomBytes(128 * QUEUE_CHUNK);
  const queueFile = join(work, 'queue.img');
  writeFileSync(queueFile, queueImage);
  const queueTarget = await targets.open(parseRef(`${bed.registry.host}/${QUEUE_REPO}:${TAG}`));
  const queued = await pushDisk({ file: queueFile, target: queueTarget, tag: TAG, pool: bed.pool, chunkSizeBytes: QUEUE_CHUNK, packSizeBytes: 512 * KiB });
  expect(queued.config.stats.uniqueChunks).toBe(128);
});

const refVia = (host: string): string => `${host}/${REPO}:${TAG}`;

/** The bytes equal the image's at offset (Buffer.equals: vitest's deep equality is slow on buffers). */
function expectImage(got: Buffer, offset: number, length: number): void {
  expect(got.byteLength).toBe(length);
  const want = image.subarray(offset, offset + length);
  if (got.equals(want)) return;
  let i = 0;
  while (i < length && got[i] === want[i]) i++;
  expect.fail(`bytes ${offset}+${length} differ from the image, first at ${offset + i}`);
}

describe('a network cut is a retry, never corruption', () => {
  const cases: { framing: CutFraming; range: 'honoured' | 'ignored' }[] = [];
  for (const framing of ['cut', 'close', 'short'] as const) for (const range of ['honoured', 'ignored'] as const) cases.push({ framing, range });

  it.each(cases)('every third blob answer cut halfway (framing $framing, Range $range): the whole disk reads right, no source is marked bad', async ({ framing, range }) => {
    const proxy = await chaos();
    const { cache, logs } = await openCache({ cacheDir: freshDir(), fetchDeadlineMs: 15_000 });
    const disk = await cache.openDisk(refVia(proxy.host));
    proxy.clearLog();
    proxy.cutEvery(3, { framing });
    if (range === 'ignored') proxy.ignoreRange();
    const data = await within(60_000, disk.read(0, DISK_BYTES), `whole-disk read through cuts (${framing}, Range ${range})`);
    expectImage(data, 0, DISK_BYTES);
    await disk.settle();
    expect(proxy.count({ fault: 'drop' })).toBeGreaterThanOrEqual(1);
    expect(cache.stats().remote.badSources).toBe(0);
    expect(logs.has('warn', 'chunk source failed; trying the next'), logs.text).toBeUndefined();
    expect(expectTier1Consistent(cache).chunks).toBe(chunkCount);
  });

  it('`slipway read` of the whole disk through a mirror-like server that ignores Range and cuts every third answer (close-delimited)', async () => {
    const proxy = await chaos();
    proxy.cutEvery(3, { framing: 'close' });
    proxy.ignoreRange();
    const cacheDir = freshDir();
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: work, XDG_CONFIG_HOME: join(work, 'no-config'), DOCKER_CONFIG: join(work, 'no-docker'), SLIPWAY_LOG_LEVEL: 'warn', SLIPWAY_FETCH_DEADLINE_MS: '15000' };
    const child = await new Promise<{ code: number; stdout: Buffer; stderr: string }>((resolve) => {
      execFile(process.execPath, [join(process.cwd(), 'bin', 'slipway.js'), 'read', refVia(proxy.host), '--offset', '0', '--length', String(DISK_BYTES), '--cache-dir', cacheDir, '--stats'], { env, encoding: 'buffer', maxBuffer: 2 * DISK_BYTES, timeout: 60_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr: stderr.toString() });
      });
    });
    expect(child.code, child.stderr).toBe(0);
    expectImage(child.stdout, 0, DISK_BYTES);
    expect(proxy.count({ fault: 'drop' })).toBeGreaterThanOrEqual(1);
    const stats = JSON.parse(child.stderr.split('\n').reverse().find((l) => l.startsWith('{"disk"')) ?? '{}') as { cache?: { remote?: { badSources: number } } };
    expect(stats.cache?.remote?.badSources).toBe(0);
    const files = chunkFiles(cacheDir);
    expect(files.filter((f) => !f.intact)).toEqual([]);
    expect(files.length).toBe(chunkCount);
  });
});

describe('the fetch deadline counts time on the wire, not time in a queue', () => {
  it('a demand read that joins a queued prefetch is raised to demand and served; the queued prefetch does not time out', async () => {
    const proxy = await chaos();
    const deadline = 3000;
    const { cache } = await openCache({ cacheDir: freshDir(), fetchDeadlineMs: deadline, connectionsPerHost: 2 });
    const disk = await cache.openDisk(`${proxy.host}/${QUEUE_REPO}:${TAG}`, { useProfile: false });
    // a registry that answers every blob request in 1.5 s, half the deadline
    proxy.delay(1500, 'blobs');
    proxy.clearLog();
    // 40 chunks two apart (128 KiB gaps: never coalesced), 40 requests in the host's queue of 2,
    // one of which only demand reads may use
    const prefetched = Array.from({ length: 40 }, (_, i) => i * 3);
    const prefetch = disk.prefetch({ priority: 'prefetch', chunks: prefetched, concurrency: 64 });
    prefetch.catch(() => undefined);
    expect(cache.hostLimit(proxy.host).queued).toBe(39);
    // the last one queued is the one a demand read now needs
    const wanted = prefetched[prefetched.length - 1] as number;
    const entry = disk.artifact.index.entries[disk.artifact.index.map[wanted] as number] as IndexEntry;
    const data = await within(60_000, disk.read(wanted * QUEUE_CHUNK + 100, 1000), 'demand read joining a queued prefetch');
    expect(data.equals(queueImage.subarray(wanted * QUEUE_CHUNK + 100, wanted * QUEUE_CHUNK + 1100))).toBe(true);
    expect(disk.stats.inflightJoins).toBe(1);
    // it went out at once, on the connection kept for demand: right after the one prefetch request on the wire
    const blobGets = proxy.requests.filter((r) => r.kind === 'blob' && r.method === 'GET');
    const position = blobGets.findIndex((r) => r.range?.startsWith(`bytes=${entry.offset}-`));
    expect(position, JSON.stringify(blobGets.map((r) => r.range))).toBe(1);
    // the rest of the queue drains; each request's deadline started when it was sent, so none of
    // them failed for having queued longer than the deadline
    proxy.passThrough();
    const result = await within(60_000, prefetch, 'the queued prefetch');
    expect(result.fetchedChunks).toBe(40);
    expect(cache.stats().remote.retries).toBe(0);
    expect(expectTier1Consistent(cache).chunks).toBe(40);
  });
});

describe('connections opened ahead of a cold disk\'s first reads', () => {
  it('opening a disk this host has not read opens the host\'s connections, asking nothing on them; its first burst of reads opens no more', async () => {
    const proxy = await chaos();
    const { cache, config } = await openCache({ cacheDir: freshDir() });
    const disk = await cache.openDisk(`${proxy.host}/${QUEUE_REPO}:${TAG}`, { useProfile: false });
    const asked = proxy.requests.length;
    expect(await disk.preconnected).toBeGreaterThan(0);
    // (the client sees a connection open before this process's proxy has accepted it)
    await within(10_000, proxy.accepted(config.connectionsPerHost), 'the connections opened ahead');
    expect(proxy.requests.length).toBe(asked);
    // as many reads as the host's bound, each of a chunk in a pack of its own, all on the wire at
    // once (the registry holds every answer 300 ms): one connection each, every one already open
    proxy.delay(300, 'blobs');
    const chunks = Array.from({ length: config.connectionsPerHost }, (_, i) => i * 16);
    const reads = await within(30_000, Promise.all(chunks.map((n) => disk.read(n * QUEUE_CHUNK, QUEUE_CHUNK))), 'the burst of reads');
    reads.forEach((got, i) => expect(got.equals(queueImage.subarray((chunks[i] as number) * QUEUE_CHUNK, ((chunks[i] as number) + 1) * QUEUE_CHUNK))).toBe(true));
    expect(proxy.requests.filter((r) => r.kind === 'blob').length).toBe(chunks.length);
    expect(proxy.connectionsAccepted).toBe(config.connectionsPerHost);
  });

  it('a disk whose first chunks are all here opens none ahead', async () => {
    const proxy = await chaos();
    const cacheDir = freshDir();
    const first = await openCache({ cacheDir });
    const disk = await first.cache.openDisk(`${proxy.host}/${QUEUE_REPO}:${TAG}`, { useProfile: false });
    expect((await within(30_000, disk.read(0, queueImage.byteLength), 'the whole disk')).equals(queueImage)).toBe(true);
    await first.cache.close();
    const before = proxy.connectionsAccepted;
    const { cache } = await openCache({ cacheDir });
    const again = await cache.openDisk(`${proxy.host}/${QUEUE_REPO}:${TAG}`, { useProfile: false });
    expect(await again.preconnected).toBe(0);
    // the tag's look-up, and nothing else
    expect(proxy.connectionsAccepted).toBe(before + 1);
  });
});
