/**
 * A model of the first boot of a disk without a profile (bench/storage-path.ts's "no profile"
 * row): the Debian boot's reads replayed in order at queue depth 1 against the pushed disk's real
 * index, with speculation windows planned by the disk's own `Speculation` and requests by the
 * remote tier's own `planRuns`. No registry is read from: each read of a chunk that is not yet
 * local is a miss, which fetches its chunk and the window's guesses (same pack, not yet local),
 * and the replay waits one round trip for it. Per window policy it prints the misses in sequence,
 * the requests, the stored bytes fetched against the bytes the boot read (the bound: at
 * most 2x), and the replay time the model predicts: the upper-bound replay's time (every chunk
 * prefetched in boot order) plus one round trip per miss, both measured by storage-path.ts:
 * `SLIPWAY_MODEL_BASE_MS` (default 324,363: the upper bound at 0 and 20 ms per request) and
 * `SLIPWAY_MODEL_MISS_MS` (default 13,34: (the default row's time - the upper bound) / its misses),
 * against `SLIPWAY_MODEL_PEER_MS` (default 1385,7102: the peer in the same run; storage-path's run
 * of 2026-12-01 11:42 UTC, docs/benchmarks.md).
 *
 * `npx tsx bench/miss-model.ts` (needs the image and trace storage-path.ts recorded in BENCH_DIR,
 * and docker-registry to push the image into, as the benchmarks do).
 */
import { existsSync, readFileSync } from 'node:fs';
import { DENSE_REGION_BOUNDS, DenseRegions, PROFILE_GAP_BYTES, PROFILE_RUN_BYTES, SPECULATION_WINDOWS, Speculation, type DenseRegionBounds, type SpeculationWindows } from '../src/cache/fetch-ahead.js';
import { planRuns } from '../src/cache/remote-tier.js';
import { main as cli } from '../src/cli/main.js';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { HOLE, type ChunkIndex, type IndexEntry } from '../src/disk/format.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { startRegistry } from '../test/helpers/registry.js';
import { SYSTEMD_IMAGE_PATH, SYSTEMD_TRACE_PATH } from './debian-root.js';

const IMAGE = SYSTEMD_IMAGE_PATH;
const TRACE = SYSTEMD_TRACE_PATH;
const pair = (name: string, dflt: [number, number]): [number, number] => {
  const v = process.env[name]?.split(',').map(Number);
  return v && v.length === 2 && v.every((x) => Number.isFinite(x) && x >= 0) ? [v[0] as number, v[1] as number] : dflt;
};
const BASE_MS = pair('SLIPWAY_MODEL_BASE_MS', [324, 363]);
const MISS_MS = pair('SLIPWAY_MODEL_MISS_MS', [13, 34]);
const PEER_MS = pair('SLIPWAY_MODEL_PEER_MS', [1385, 7102]);

interface Outcome {
  misses: number;
  requests: number;
  storedBytes: number;
}

/** The dense-region fill off: speculation windows alone. */
const NO_DENSE: DenseRegionBounds = { misses: 0, reach: 0, margin: 0 };

/**
 * Replay `reads` ([offset, length] in bytes) against `index` with speculation windows `w` and
 * dense regions `dense` (whose guesses the model takes as local at once: an upper bound on what
 * they save). The disk's GuessYield is left out: on this boot it never stops guessing.
 */
function replay(index: ChunkIndex, reads: [number, number][], w: SpeculationWindows, dense: DenseRegionBounds): Outcome {
  const spec = new Speculation(w);
  const regions = new DenseRegions(dense);
  const local = new Set<number>(); // entries
  const out: Outcome = { misses: 0, requests: 0, storedBytes: 0 };
  const cs = index.chunkSizeBytes;
  for (const [off, len] of reads) {
    for (let n = Math.floor(off / cs); n <= Math.floor((off + len - 1) / cs); n++) {
      const e = index.map[n] as number;
      if (e === HOLE || local.has(e)) continue;
      out.misses++;
      const pack = (index.entries[e] as IndexEntry).pack;
      const wanted = [{ entry: e, chunk: n }];
      for (const m of spec.onMiss(n, index.chunkCount)) {
        const g = index.map[m] as number;
        if (g === HOLE || local.has(g) || (index.entries[g] as IndexEntry).pack !== pack || wanted.some((x) => x.entry === g)) continue;
        wanted.push({ entry: g, chunk: m });
      }
      for (const run of planRuns(index, wanted)) {
        out.requests++;
        out.storedBytes += run.length;
      }
      for (const x of wanted) local.add(x.entry);
      const span = regions.onMiss(n, index.chunkCount);
      if (!span) continue;
      const fill: { entry: number; chunk: number }[] = [];
      for (let m = span.from; m <= span.to; m++) {
        const g = index.map[m] as number;
        if (g === HOLE || local.has(g) || fill.some((x) => x.entry === g)) continue;
        fill.push({ entry: g, chunk: m });
      }
      // as the disk plans a region's requests (lazy-disk.ts's fillDenseRegion)
      for (const run of planRuns(index, fill, PROFILE_RUN_BYTES, PROFILE_GAP_BYTES)) {
        out.requests++;
        out.storedBytes += run.length;
      }
      for (const x of fill) local.add(x.entry);
    }
  }
  return out;
}

async function main(): Promise<void> {
  if (!existsSync(IMAGE) || !existsSync(TRACE)) throw new Error(`${IMAGE} and ${TRACE} come from bench/storage-path.ts: run it once first`);
  const reads = readFileSync(TRACE, 'utf8').trim().split('\n').map((l) => l.split(' ').map(Number) as [number, number]);
  const bootBytes = reads.reduce((s, [, l]) => s + l, 0);
  const registry = await startRegistry();
  const targets = new Targets();
  try {
    const ref = `${registry.host}/bench/model:v1`;
    if (await cli(['push', IMAGE, ref, '--progress=none'], { stdout: process.stderr, stderr: process.stderr }) !== 0) throw new Error('push failed');
    const { index } = await openDiskArtifact(await targets.open(parseRef(ref)), 'v1');
    const d = DENSE_REGION_BOUNDS;
    const policies: [string, SpeculationWindows, DenseRegionBounds][] = [
      ['none (demand only)', { min: 0, max: 0, back: 0 }, NO_DENSE],
      [`the disks' own: ${SPECULATION_WINDOWS.min} ahead doubling to ${SPECULATION_WINDOWS.max}, ${SPECULATION_WINDOWS.back} behind; dense regions of ${d.misses} misses within ${d.reach} chunks, ${d.margin} of margin`, SPECULATION_WINDOWS, d],
      [`the same windows, no dense regions`, SPECULATION_WINDOWS, NO_DENSE],
    ];
    for (const [min, max, back] of [[4, 16, 0], [2, 8, 1], [8, 32, 0], [8, 32, 1]] as const) {
      policies.push([`${min} ahead doubling to ${max}, ${back} behind`, { min, max, back }, NO_DENSE]);
      policies.push([`${min} ahead doubling to ${max}, ${back} behind; dense regions as the disks'`, { min, max, back }, d]);
    }
    // the grid the disks' windows were picked from (src/cache/fetch-ahead.ts), with their dense regions
    for (const min of [6, 8]) for (const max of [12, 16, 20]) for (const back of [0, 1, 2]) {
      policies.push([`${min} ahead doubling to ${max}, ${back} behind; dense regions as the disks'`, { min, max, back }, d]);
    }
    for (const [misses, reach, margin] of [[2, 12, 4], [3, 12, 4], [3, 16, 8], [3, 24, 4], [4, 16, 4], [3, 16, 0], [3, 16, 1], [3, 16, 2], [3, 16, 3], [3, 14, 4], [3, 14, 2]] as const) {
      policies.push([`the disks' windows; dense regions of ${misses} misses within ${reach} chunks, ${margin} of margin`, SPECULATION_WINDOWS, { misses, reach, margin }]);
    }
    console.log(`\n## first boot without a profile, modelled: ${reads.length} reads, ${bootBytes} bytes; a miss costs ${MISS_MS[0]} / ${MISS_MS[1]} ms over a replay of ${BASE_MS[0]} / ${BASE_MS[1]} ms (0 / 20 ms per request)\n`);
    console.log('| speculation | misses | requests | fetched / read | 0 ms: model ms | ratio | 20 ms: model ms | ratio |');
    console.log('|---|---|---|---|---|---|---|---|');
    for (const [name, w, dense] of policies) {
      const o = replay(index, reads, w, dense);
      const t = [0, 1].map((i) => (BASE_MS[i] as number) + o.misses * (MISS_MS[i] as number));
      const cells = t.flatMap((ms, i) => [String(Math.round(ms)), (ms / (PEER_MS[i] as number)).toFixed(3)]);
      console.log(`| ${name} | ${o.misses} | ${o.requests} | ${(o.storedBytes / bootBytes).toFixed(2)} | ${cells.join(' | ')} |`);
    }
  } finally {
    await targets.close();
    await registry.stop();
  }
}

await main();
