/**
 * The chunk cache (docs/benchmarks.md): 4 KiB random reads through LazyDisk.read() with the disk in
 * tier 0 and in tier 1, against pread on a local raw copy in the same process; a cold sequential
 * read of the whole image against `slipway pull`; 16 concurrent readers of one cold image (bytes
 * fetched against stored bytes); over-fetch on a cold random-read workload.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { HOLE } from '../src/disk/format.js';
import { silentLogger } from '../src/util/log.js';
import { startRegistry } from '../test/helpers/registry.js';
import { asSlipwayProcess, BENCH_DIR, dropCaches, halfFullImage, median, report, timed } from './lib.js';

const READS = 20_000;
const KiB = 1024;

function randomOffsets(sizeBytes: number, count: number, nonZero: (off: number) => boolean): number[] {
  const out: number[] = [];
  while (out.length < count) {
    const off = Math.floor(Math.random() * (sizeBytes / 4096)) * 4096;
    if (nonZero(off)) out.push(off);
  }
  return out;
}

async function main(): Promise<void> {
  const img = halfFullImage();
  const sizeBytes = statSync(img).size;
  const registry = await startRegistry();
  const ref = `${registry.host}/bench/cache:v1`;
  const slipway = (args: string[]) => execFileSync('node', [join(process.cwd(), 'bin', 'slipway.js'), ...args, '--progress=none'], { encoding: 'utf8' });
  slipway(['push', img, ref]);
  const fresh = (name: string, extra = {}) => {
    const dir = join(BENCH_DIR, `cache-${name}`);
    rmSync(dir, { recursive: true, force: true });
    return ChunkCache.open({ config: loadConfig({}, { cacheDir: dir, memoryBudgetBytes: 2 << 30, ...extra }), logger: silentLogger });
  };
  const rows = [];
  try {
    // random 4 KiB reads: tier 0, tier 1, pread (sync and async) on the raw file
    const warm = await fresh('warm');
    const disk = await warm.openDisk(ref, { useProfile: false });
    await disk.read(0, sizeBytes); // everything into tier 0 and tier 1
    const { index } = disk.artifact;
    const offsets = randomOffsets(sizeBytes, READS, (off) => index.map[Math.floor(off / index.chunkSizeBytes)] !== HOLE);
    for (const o of offsets) await disk.read(o, 4096); // warm-up pass, untimed, as for every path below
    const t0 = await timed(async () => { for (const o of offsets) await disk.read(o, 4096); });
    await warm.close();
    const tier1Only = await fresh('warm', { memoryBudgetBytes: 1 });
    // the directory was just reset: fill tier 1 first (not timed), then time reads with no memory tier
    const d1 = await tier1Only.openDisk(ref, { useProfile: false });
    await d1.prefetch();
    for (const o of offsets) await d1.read(o, 4096); // warm-up: the first touch verifies each file once
    const t1 = await timed(async () => { for (const o of offsets) await d1.read(o, 4096); });
    await tier1Only.close();
    const fd = openSync(img, 'r');
    const buf = Buffer.allocUnsafe(4096);
    for (const o of offsets) readSync(fd, buf, 0, 4096, o);
    const tp = await timed(() => { for (const o of offsets) readSync(fd, buf, 0, 4096, o); });
    closeSync(fd);
    const fh = await open(img, 'r');
    for (const o of offsets) await fh.read(buf, 0, 4096, o);
    const ta = await timed(async () => { for (const o of offsets) await fh.read(buf, 0, 4096, o); });
    await fh.close();
    const us = (ms: number) => ((ms * 1000) / READS).toFixed(2);
    rows.push(
      { name: 'pread (readSync) on the raw file', usPerRead: us(tp.ms), ratioToPread: '1.00', ratioToAsyncPread: (tp.ms / ta.ms).toFixed(2) },
      { name: 'FileHandle.read on the raw file', usPerRead: us(ta.ms), ratioToPread: (ta.ms / tp.ms).toFixed(2), ratioToAsyncPread: '1.00' },
      { name: 'read() from tier 0 (memory)', usPerRead: us(t0.ms), ratioToPread: (t0.ms / tp.ms).toFixed(2), ratioToAsyncPread: (t0.ms / ta.ms).toFixed(2) },
      { name: 'read() from tier 1 (local chunk files)', usPerRead: us(t1.ms), ratioToPread: (t1.ms / tp.ms).toFixed(2), ratioToAsyncPread: (t1.ms / ta.ms).toFixed(2) },
    );
    report(`4 KiB random reads, ${READS} per run, 1 GiB half-full image (page cache warm for all)`, rows, 'cache-random-reads');

    // cold sequential read of the whole image vs slipway pull
    const seq: number[] = [];
    const pull: number[] = [];
    for (let run = 0; run < 3; run++) {
      const cold = await fresh('cold');
      dropCaches();
      seq.push((await timed(async () => {
        const d = await cold.openDisk(ref, { useProfile: false });
        for (let off = 0; off < sizeBytes; off += 4 << 20) await d.read(off, Math.min(4 << 20, sizeBytes - off));
      })).ms);
      await cold.close();
      const out = join(BENCH_DIR, 'pulled.img');
      rmSync(out, { force: true });
      dropCaches();
      pull.push((await timed(() => slipway(['pull', ref, out]))).ms);
      rmSync(out, { force: true });
    }
    report('cold sequential read of the whole image (4 MiB reads) vs slipway pull, medians of 3', [
      { name: 'slipway pull', ms: Math.round(median(pull)), ratio: '1.00' },
      { name: 'LazyDisk sequential read, empty cache', ms: Math.round(median(seq)), ratio: (median(seq) / median(pull)).toFixed(2) },
    ], 'cache-sequential');

    // 16 concurrent readers of one cold image
    const c16 = await fresh('c16');
    const d16 = await c16.openDisk(ref, { useProfile: false });
    const stored = d16.artifact.index.entries.reduce((s, e) => s + e.storedLength, 0);
    const t16 = await timed(() => Promise.all(Array.from({ length: 16 }, async () => {
      for (let off = 0; off < sizeBytes; off += 1 << 20) await d16.read(off, Math.min(1 << 20, sizeBytes - off));
    })));
    const s16 = c16.stats();
    await c16.close();
    // over-fetch: cold random 4 KiB and 64 KiB reads
    const over = [];
    for (const size of [4 * KiB, 64 * KiB]) {
      const co = await fresh(`over-${size}`);
      const dov = await co.openDisk(ref, { useProfile: false });
      const offs = randomOffsets(sizeBytes - size, 500, (off) => index.map[Math.floor(off / index.chunkSizeBytes)] !== HOLE);
      for (const o of offs) await dov.read(o, size);
      const s = co.stats();
      over.push({ name: `cold random ${size / KiB} KiB reads (500)`, askedBytes: 500 * size, fetchedBytes: s.remote.bytes, ratio: (s.remote.bytes / (500 * size)).toFixed(1) });
      await co.close();
    }
    report('fetch efficiency', [
      { name: '16 concurrent readers of one cold image', askedBytes: 16 * sizeBytes, fetchedBytes: s16.remote.bytes, ratio: `${(s16.remote.bytes / stored).toFixed(3)} of stored (${stored})`, ms: Math.round(t16.ms), inflightJoins: s16.inflightJoins },
      ...over,
    ], 'cache-fetch');
  } finally {
    await registry.stop();
  }
}

// it serves disks in this process: as the `slipway` executable would
await asSlipwayProcess();
await main();
