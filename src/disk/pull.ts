import { dirname } from 'node:path';
import { fromFsError } from '../errors.js';
import type { Target } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import { writeAtomic } from '../util/atomic-file.js';
import { forEachBounded } from '../util/concurrency.js';
import type { ProgressFn } from '../util/progress.js';
import type { DiskArtifact } from './artifact.js';
import type { ChunkCoder } from './chunk-codec.js';
import { chunkLength, HOLE, type IndexEntry } from './format.js';

/** Packs fetched at once: each is bounded (8 MiB by default), so memory stays bounded too. */
const PACKS_IN_FLIGHT = 4;
/** Fetch a pack whole when at least this share of it is wanted; otherwise Range-read each entry. */
const WHOLE_PACK_SHARE = 0.5;

export interface PullOptions {
  target: Target;
  disk: DiskArtifact;
  outFile: string;
  pool: ChunkCoder;
  onProgress?: ProgressFn;
}

export interface PullResult {
  sizeBytes: number;
  fetchedBytes: number;
  writtenBytes: number;
}

interface PackWork {
  pack: Descriptor;
  /** entries in this pack with the chunk numbers that use each */
  entries: { entry: IndexEntry; chunks: number[] }[];
  wantedBytes: number;
}

function planByPack(disk: DiskArtifact): PackWork[] {
  const { index } = disk;
  const chunksOfEntry = new Map<number, number[]>();
  for (let n = 0; n < index.chunkCount; n++) {
    const e = index.map[n] as number;
    if (e === HOLE) continue;
    const list = chunksOfEntry.get(e);
    if (list) list.push(n);
    else chunksOfEntry.set(e, [n]);
  }
  const work: PackWork[] = index.packs.map((pack) => ({ pack, entries: [], wantedBytes: 0 }));
  for (const [e, chunks] of chunksOfEntry) {
    const entry = index.entries[e] as IndexEntry;
    const w = work[entry.pack] as PackWork;
    w.entries.push({ entry, chunks });
    w.wantedBytes += entry.storedLength;
  }
  return work.filter((w) => w.entries.length > 0);
}

/**
 * Pull a disk into a sparse raw file: holes stay holes. Packs are fetched (whole, or by Range
 * when little of a pack is used), every chunk is decompressed and checked against its digest in
 * the workers, and written where the index says. The file appears under its name only when
 * complete (util/atomic-file.ts: temporary file, fsync, rename, directory fsync).
 */
export async function pullDisk(opts: PullOptions): Promise<PullResult> {
  const { disk, target, pool } = opts;
  const { index } = disk;
  let fetchedBytes = 0;
  let writtenBytes = 0;
  const report = (phase: string): void => {
    opts.onProgress?.({ op: 'pull', phase, doneBytes: writtenBytes, totalBytes: index.sizeBytes, fetchedBytes });
  };
  await writeAtomic(opts.outFile, async (file) => {
    await file.truncate(index.sizeBytes);
    const work = planByPack(disk);
    const writeEntry = async (entry: IndexEntry, chunks: number[], stored: Buffer): Promise<void> => {
      const first = chunks[0] as number;
      const len = chunkLength(index, first);
      const { data } = await pool.decode(stored, entry.flags, len, entry.digest, `chunk ${first} of ${disk.reference}`);
      for (const n of chunks) {
        await file.write(data, 0, len, n * index.chunkSizeBytes);
        writtenBytes += len;
      }
    };
    const doPack = async (w: PackWork): Promise<void> => {
      if (w.wantedBytes >= w.pack.size * WHOLE_PACK_SHARE) {
        const blob = await target.fetchBlob(w.pack);
        fetchedBytes += blob.byteLength;
        await Promise.all(w.entries.map(({ entry, chunks }) => writeEntry(entry, chunks, blob.subarray(entry.offset, entry.offset + entry.storedLength))));
      } else {
        for (const { entry, chunks } of w.entries) {
          const stored = await target.fetchBlobRange(w.pack, entry.offset, entry.storedLength);
          fetchedBytes += stored.byteLength;
          await writeEntry(entry, chunks, stored);
        }
      }
      report('pack');
    };
    report('start');
    await forEachBounded(work, PACKS_IN_FLIGHT, doPack);
  }, { openFailed: (err) => fromFsError(err, dirname(opts.outFile), 'output directory') });
  report('done');
  return { sizeBytes: index.sizeBytes, fetchedBytes, writtenBytes };
}
