/**
 * How the chunk size and the pack size were chosen (docs/format.md). On the 1 GiB half-full ext4
 * image, for each chunk size: push time into a layout, stored bytes, index size (and the figure
 * for a 100 GiB disk), and the bytes a lazy reader would fetch for random 4 KiB and 64 KiB reads.
 * Then, against a real registry: the time to get one chunk by Range versus the whole pack, which
 * is what a mirror that ignores Range costs for each miss.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { HOLE, type IndexEntry } from '../src/disk/format.js';
import { pushDisk } from '../src/disk/push.js';
import { sha256Digest } from '../src/oci/digest.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { RegistryRepository } from '../src/oci/registry/repository.js';
import { WorkerPool } from '../src/workers/pool.js';
import { startRegistry } from '../test/helpers/registry.js';
import { BENCH_DIR, halfFullImage, median, report, timed, type Row } from './lib.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function overFetch(index: { chunkSizeBytes: number; map: Uint32Array; entries: IndexEntry[] }, readBytes: number, reads: number): number {
  // cold random reads that land on data (a lazy reader never fetches holes): for each read, the
  // stored bytes of the chunks it touches, over the bytes it asked for
  const nonZero = [...index.map.keys()].filter((n) => index.map[n] !== HOLE);
  let fetched = 0;
  let asked = 0;
  for (let i = 0; i < reads; i++) {
    const n = nonZero[Math.floor(Math.random() * nonZero.length)] as number;
    const start = n * index.chunkSizeBytes + Math.floor(Math.random() * (index.chunkSizeBytes / (4 * KiB))) * 4 * KiB;
    asked += readBytes;
    const last = Math.min(index.map.length - 1, Math.floor((start + readBytes - 1) / index.chunkSizeBytes));
    for (let c = n; c <= last; c++) if (index.map[c] !== HOLE) fetched += (index.entries[index.map[c] as number] as IndexEntry).storedLength;
  }
  return fetched / asked;
}

async function main(): Promise<void> {
  const img = halfFullImage();
  const pool = new WorkerPool();
  const targets = new Targets();
  const rows: Row[] = [];
  for (const chunk of [256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB]) {
    const dir = join(BENCH_DIR, `layout-${chunk}`);
    rmSync(dir, { recursive: true, force: true });
    const target = await targets.open(parseRef(`oci:${dir}:v1`), { createLayout: true });
    const { ms, value } = await timed(() => pushDisk({ file: img, target, tag: 'v1', pool, chunkSizeBytes: chunk }));
    const disk = await openDiskArtifact(target, 'v1');
    const nonZero = value.config.chunkCount - value.config.stats.zeroChunks;
    const indexPerChunk = value.config.index.size / Math.max(1, nonZero);
    rows.push({
      name: `${chunk / KiB} KiB`,
      pushMs: Math.round(ms),
      storedMiB: (value.config.stats.storedBytes / MiB).toFixed(1),
      indexKiB: (value.config.index.size / KiB).toFixed(1),
      index100GiBDenseMiB: ((indexPerChunk * (100 * 1024 * MiB)) / chunk / MiB).toFixed(2),
      overFetch4K: overFetch(disk.index, 4 * KiB, 2000).toFixed(0),
      overFetch64K: overFetch(disk.index, 64 * KiB, 2000).toFixed(1),
    });
    rmSync(dir, { recursive: true, force: true });
  }
  report('chunk size: push cost, stored size, index size, lazy over-fetch (fetched/asked) for random reads', rows, 'chunk-size');

  const registry = await startRegistry();
  const packRows: Row[] = [];
  try {
    const repo = (await targets.open(parseRef(`${registry.host}/bench/packs`))) as RegistryRepository;
    for (const pack of [2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB]) {
      const data = randomBytes(pack);
      const desc = { mediaType: 'application/octet-stream', digest: sha256Digest(data), size: pack };
      await repo.pushBlob(desc, data);
      const range: number[] = [];
      const whole: number[] = [];
      for (let i = 0; i < 7; i++) {
        range.push((await timed(() => repo.fetchBlobRange(desc, pack / 2, 200 * KiB))).ms);
        whole.push((await timed(() => repo.fetchBlob(desc))).ms);
      }
      packRows.push({ name: `${pack / MiB} MiB pack`, rangeMs: median(range).toFixed(2), wholeMs: median(whole).toFixed(2), ratio: (median(whole) / median(range)).toFixed(1) });
    }
  } finally {
    await registry.stop();
    await targets.close();
    await pool.close();
  }
  report('pack size: one 200 KiB chunk by Range versus the whole pack (a server ignoring Range), medians of 7', packRows, 'pack-size');
}

await main();
