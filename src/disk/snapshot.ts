/**
 * Disk snapshots: the chunks a VM wrote, pushed as a delta of the disk it booted from. The
 * overlay of slipway-blk (docs/vhost-user-blk.md) holds the written chunks in `data` and says
 * which they are in `dirty`; a snapshot stages those chunks in a sparse file while the guest's
 * file system is frozen, then pushes them with `pushDisk`'s delta mode: its index refers to the
 * base's packs for every other chunk, its `subject` is the base manifest and its config names the
 * base digest.
 */
import { open, readFile, rm } from 'node:fs/promises';
import { SlipwayError, fromFsError } from '../errors.js';
import { copyImage } from '../oci/copy.js';
import type { Target } from '../oci/store.js';
import type { ProgressFn } from '../util/progress.js';
import type { ChunkCoder as WorkerPool } from './chunk-codec.js';
import type { DiskArtifact } from './artifact.js';
import { chunkLength } from './format.js';
import { pushDisk, type PushResult } from './push.js';

export const DIRTY_MAGIC = 'SLWYDRT1';
const DIRTY_HEADER_BYTES = 32;

export interface DirtyBitmap {
  sizeBytes: number;
  chunkSizeBytes: number;
  chunkCount: number;
  /** the dirty chunks, ascending */
  chunks: number[];
}

/**
 * Read an overlay's dirty bitmap. The file is the backend's, so it is checked, not trusted: its
 * geometry must be the disk's, and no bit may name a chunk past the end.
 */
export async function readDirtyBitmap(path: string, disk: { sizeBytes: number; chunkSizeBytes: number; chunkCount: number }): Promise<DirtyBitmap> {
  let raw: Buffer;
  try {
    raw = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { sizeBytes: disk.sizeBytes, chunkSizeBytes: disk.chunkSizeBytes, chunkCount: disk.chunkCount, chunks: [] };
    throw fromFsError(err, path, 'dirty bitmap');
  }
  const bad = (why: string): SlipwayError => new SlipwayError('OVERLAY_INVALID', `${path}: ${why}`);
  if (raw.subarray(0, 8).toString('latin1') !== DIRTY_MAGIC) throw bad(`not a dirty bitmap (magic ${DIRTY_MAGIC} missing)`);
  if (raw.byteLength < DIRTY_HEADER_BYTES) throw bad(`truncated: ${raw.byteLength} bytes, shorter than the ${DIRTY_HEADER_BYTES}-byte header`);
  const version = raw.readUInt32LE(8);
  if (version !== 1) throw bad(`dirty bitmap version ${version}, expected 1`);
  const shift = raw.readUInt32LE(12);
  const sizeBytes = Number(raw.readBigUInt64LE(16));
  const chunkCount = Number(raw.readBigUInt64LE(24));
  if (shift > 30 || 2 ** shift !== disk.chunkSizeBytes) throw bad(`chunk size 2^${shift}, the disk's is ${disk.chunkSizeBytes}`);
  if (sizeBytes !== disk.sizeBytes || chunkCount !== disk.chunkCount) throw bad(`geometry ${sizeBytes} bytes / ${chunkCount} chunks, the disk's is ${disk.sizeBytes} / ${disk.chunkCount}`);
  const bits = raw.subarray(DIRTY_HEADER_BYTES);
  if (bits.byteLength !== Math.ceil(chunkCount / 8)) throw bad(`${bits.byteLength} bitmap bytes for ${chunkCount} chunks`);
  const chunks: number[] = [];
  for (let i = 0; i < bits.byteLength; i++) {
    const b = bits[i] as number;
    if (b === 0) continue;
    for (let bit = 0; bit < 8; bit++) {
      if (!(b & (1 << bit))) continue;
      const n = i * 8 + bit;
      if (n >= chunkCount) throw bad(`bit set for chunk ${n}, past the last chunk ${chunkCount - 1}`);
      chunks.push(n);
    }
  }
  return { sizeBytes, chunkSizeBytes: disk.chunkSizeBytes, chunkCount, chunks };
}

/**
 * Copy the dirty chunks of an overlay's `data` into a sparse staging file of the disk's size, at
 * their offsets: a consistent copy taken while the guest is frozen, pushed after it is thawed.
 */
export async function stageDirtyChunks(overlayData: string, dirty: DirtyBitmap, staging: string): Promise<number> {
  const index = { sizeBytes: dirty.sizeBytes, chunkSizeBytes: dirty.chunkSizeBytes, chunkCount: dirty.chunkCount };
  const src = await open(overlayData, 'r').catch((err: unknown) => {
    throw fromFsError(err, overlayData, 'overlay data');
  });
  let copied = 0;
  try {
    const dst = await open(staging, 'w', 0o600);
    try {
      await dst.truncate(dirty.sizeBytes);
      const buf = Buffer.allocUnsafe(dirty.chunkSizeBytes);
      for (const n of dirty.chunks) {
        const len = chunkLength(index, n);
        const at = n * dirty.chunkSizeBytes;
        let got = 0;
        while (got < len) {
          const { bytesRead } = await src.read(buf, got, len - got, at + got);
          if (bytesRead === 0) break; // a sparse tail reads as zeros
          got += bytesRead;
        }
        buf.fill(0, got, len);
        await dst.write(buf, 0, len, at);
        copied += len;
      }
      await dst.datasync();
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
  return copied;
}

export interface PushSnapshotOptions {
  base: DiskArtifact;
  /** where the base lives: its packs are mounted or copied into `target` when it lacks them */
  baseTarget: Target;
  staging: string;
  dirty: DirtyBitmap;
  target: Target;
  tag: string;
  pool: WorkerPool;
  annotations?: Record<string, string>;
  /** more disks to deduplicate against (their packs must be in `target`), as pushDisk's */
  dedupFrom?: DiskArtifact[];
  /** deduplicate against the repository's recent disks too (pushDisk's repositoryDedup; off for deltas by default) */
  repositoryDedup?: boolean;
  onProgress?: ProgressFn;
}

/**
 * Push a staged snapshot. The base's blobs must be in the target repository for the index to
 * refer to them: they are mounted (one registry) or copied there first, untagged, which costs a
 * HEAD per blob when they are there already. The tag is written last, by `pushDisk`.
 */
export async function pushSnapshot(opts: PushSnapshotOptions): Promise<PushResult & { dirtyChunks: number; baseBlobsCopied: number }> {
  let baseBlobsCopied = 0;
  if (opts.baseTarget.name !== opts.target.name) {
    const copied = await copyImage({ src: opts.baseTarget, srcReference: opts.base.manifestDescriptor.digest, dst: opts.target });
    baseBlobsCopied = copied.copiedBlobs + copied.mountedBlobs;
  }
  const dirty = new Uint8Array(opts.dirty.chunkCount);
  for (const n of opts.dirty.chunks) dirty[n] = 1;
  const result = await pushDisk({
    file: opts.staging, target: opts.target, tag: opts.tag, pool: opts.pool, base: opts.base,
    chunkSizeBytes: opts.base.index.chunkSizeBytes, compression: opts.base.config.compression,
    changed: (n) => dirty[n] === 1,
    ...(opts.annotations ? { annotations: opts.annotations } : {}),
    ...(opts.dedupFrom ? { dedupFrom: opts.dedupFrom } : {}),
    ...(opts.repositoryDedup !== undefined ? { repositoryDedup: opts.repositoryDedup } : {}),
    ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
  });
  return { ...result, dirtyChunks: opts.dirty.chunks.length, baseBlobsCopied };
}

export async function removeStaging(path: string): Promise<void> {
  await rm(path, { force: true });
}

/**
 * Put a staged snapshot's chunks into a local chunk store (the host's tier 1), so that booting the
 * snapshot on the host that took it fetches nothing: each chunk is named by the sha256 the worker
 * computes here, as any chunk is. Zero chunks are holes and are skipped. Returns the chunks put.
 */
export async function seedChunks(staging: string, dirty: DirtyBitmap, pool: WorkerPool, put: (digestHex: string, data: Buffer) => Promise<boolean>): Promise<number> {
  const index = { sizeBytes: dirty.sizeBytes, chunkSizeBytes: dirty.chunkSizeBytes };
  const file = await open(staging, 'r').catch((err: unknown) => {
    throw fromFsError(err, staging, 'snapshot staging file');
  });
  let seeded = 0;
  try {
    for (const n of dirty.chunks) {
      const len = chunkLength(index, n);
      // a buffer of its own: it is transferred to the worker and back
      const buf = Buffer.allocUnsafeSlow(len);
      const { bytesRead } = await file.read(buf, 0, len, n * dirty.chunkSizeBytes);
      buf.fill(0, bytesRead);
      const enc = await pool.encode(buf, 0);
      if (enc.zero) continue;
      if (await put(enc.digest.toString('hex'), enc.stored)) seeded++;
    }
  } finally {
    await file.close();
  }
  return seeded;
}
