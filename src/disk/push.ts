import { open, readFile, stat } from 'node:fs/promises';
import { SlipwayError, fromFsError, isSlipwayError } from '../errors.js';
import { sha256Digest, withEmbeddedData } from '../oci/digest.js';
import type { Target } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import type { ProgressFn } from '../util/progress.js';
import { compressIndex, type ChunkCoder } from './chunk-codec.js';
import { openDiskArtifact, type DiskArtifact } from './artifact.js';
import { DEFAULT_REPOSITORY_DEDUP, recentRepositoryDisks, type RepositoryDedupLimits } from './dedup.js';
import { forEachBounded } from '../util/concurrency.js';
import {
  buildDiskManifest, checkChunkSize, chunkCountFor, encodeIndex, FORMAT_VERSION, HOLE,
  MEDIA_TYPE_DISK_CONFIG, MEDIA_TYPE_DISK_INDEX, MEDIA_TYPE_DISK_PACK, SECTOR_BYTES,
  DEFAULT_CHUNK_BYTES, DEFAULT_PACK_BYTES, MAX_PACK_BYTES,
  type ChunkIndex, type Compression, type DiskConfig, type IndexEntry,
} from './format.js';

export const DEFAULT_ZSTD_LEVEL = 3;
/** Pack uploads in flight: enough to keep a link busy while the workers fill the next pack. */
const UPLOADS_IN_FLIGHT = 3;

export interface PushOptions {
  file: string;
  target: Target;
  tag: string;
  pool: ChunkCoder;
  chunkSizeBytes?: number;
  packSizeBytes?: number;
  compression?: Compression;
  zstdLevel?: number;
  /**
   * More disks whose chunks may be referenced instead of uploaded again (the target tag's current
   * disk is always tried). A chunk is taken from one of these only if its pack is already in the
   * target (one HEAD per pack, before reading starts); otherwise it is stored anew.
   */
  dedupFrom?: DiskArtifact[];
  /**
   * Dedup against other disks of the target repository (`recentRepositoryDisks`: newest-looking
   * tags first, bounded by these limits). On by default for whole-image pushes, off for deltas
   * (`changed`), which reuse their base already; `false` turns it off.
   */
  repositoryDedup?: boolean | RepositoryDedupLimits;
  /** Set `subject` and `config.base` (snapshots). */
  base?: DiskArtifact;
  /**
   * A delta against `base` (snapshots): only chunks for which `changed(n)` is true are read from
   * `file` (a sparse file of the base's size); every other chunk is the base's, referred to in
   * the base's packs without being read, hashed or sent.
   */
  changed?: (chunk: number) => boolean;
  annotations?: Record<string, string>;
  onProgress?: ProgressFn;
}

export interface PushResult {
  manifest: Descriptor;
  /** the manifest's bytes as pushed */
  manifestBody: Buffer;
  config: DiskConfig;
  /** the disk's chunk index as pushed */
  index: ChunkIndex;
  /** packs written by this push (the rest were already in the store) */
  uploadedPacks: number;
  uploadedBytes: number;
  /** chunks found in the target's or a base's packs */
  reusedChunks: number;
  newChunks: number;
  /**
   * The disks of the target this push deduplicated against, most related first: its base (a
   * delta), the tag's previous disk, then the repository's newest-looking tags (what a boot
   * profile may be inherited from: cache/profile-inheritance.ts).
   */
  dedupedAgainst: DiskArtifact[];
}

const EMPTY = Buffer.alloc(0);

interface KnownChunk {
  pack: Descriptor;
  offset: number;
  storedLength: number;
  flags: number;
}

/** Check what a disk image file must be before anything is read or sent. */
export async function checkImageFile(file: string): Promise<number> {
  let info;
  try {
    info = await stat(file);
  } catch (err) {
    throw fromFsError(err, file, 'disk image');
  }
  if (!info.isFile() && !info.isBlockDevice()) throw new SlipwayError('INVALID_DISK_IMAGE', `${file} is not a regular file or block device`);
  // a block device's stat size is 0: its size is in sysfs, in 512-byte sectors
  const size = info.isBlockDevice() ? await blockDeviceBytes(file, info.rdev) : info.size;
  if (size === 0) throw new SlipwayError('INVALID_DISK_IMAGE', `${file} is empty`);
  if (size % SECTOR_BYTES !== 0) {
    throw new SlipwayError('INVALID_DISK_IMAGE', `${file} is ${size} bytes, not a multiple of ${SECTOR_BYTES} (a raw disk image is whole sectors)`, { context: { file, sizeBytes: size } });
  }
  return size;
}

/**
 * The size in bytes of the block device `file` whose device number is `rdev`: Linux's
 * `/sys/dev/block/<major>:<minor>/size`, in 512-byte sectors whatever the device's block size.
 */
async function blockDeviceBytes(file: string, rdev: number): Promise<number> {
  // glibc's gnu_dev_major/minor for the 32 low bits (the high ones are 0 for any device seen)
  const major = (rdev >>> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  const sysfs = `/sys/dev/block/${major}:${minor}/size`;
  let text: string;
  try {
    text = await readFile(sysfs, 'utf8');
  } catch (err) {
    throw new SlipwayError('INVALID_DISK_IMAGE', `${file}: cannot read the block device's size from ${sysfs}: ${(err as Error).message}`, { cause: err });
  }
  const sectors = Number(text.trim());
  if (!Number.isSafeInteger(sectors) || sectors < 0) throw new SlipwayError('INVALID_DISK_IMAGE', `${file}: ${sysfs} says ${JSON.stringify(text.trim())}, not a sector count`);
  return sectors * SECTOR_BYTES;
}

function knownChunksOf(disks: DiskArtifact[], chunkSizeBytes: number): Map<string, KnownChunk> {
  const known = new Map<string, KnownChunk>();
  for (const d of disks) {
    if (d.index.chunkSizeBytes !== chunkSizeBytes) continue;
    for (const e of d.index.entries) {
      const key = e.digest.toString('hex');
      if (!known.has(key)) known.set(key, { pack: d.index.packs[e.pack] as Descriptor, offset: e.offset, storedLength: e.storedLength, flags: e.flags });
    }
  }
  return known;
}

/**
 * `disks` with their index cut down to the packs `target` already holds (one HEAD per distinct
 * pack, 8 at once): a `--dedup-from` disk of another repository or store may only lend chunks
 * whose pack the pushed manifest can list as a layer of its own repository.
 */
async function packsInTarget(target: Target, disks: DiskArtifact[]): Promise<DiskArtifact[]> {
  const digests = [...new Set(disks.flatMap((d) => d.index.packs.map((p) => p.digest)))];
  const present = new Set<string>();
  await forEachBounded(digests, 8, async (digest) => {
    if (await target.blobExists(digest)) present.add(digest);
  });
  return disks.map((d) => ({
    ...d,
    index: { ...d.index, entries: d.index.entries.filter((e) => present.has((d.index.packs[e.pack] as Descriptor).digest)) },
  }));
}

/** The slipway disk the tag points to now, if any: its chunks need not be sent again. */
async function currentDiskAt(target: Target, tag: string): Promise<DiskArtifact | undefined> {
  const current = await target.resolve(tag).catch((err: unknown) => {
    if (isSlipwayError(err, 'NAME_UNKNOWN') || isSlipwayError(err, 'LAYOUT_INVALID')) return undefined;
    throw err;
  });
  if (!current) return undefined;
  try {
    return await openDiskArtifact(target, current.digest);
  } catch (err) {
    if (isSlipwayError(err, 'NOT_A_SLIPWAY_DISK') || isSlipwayError(err, 'UNSUPPORTED_FORMAT_VERSION')) return undefined;
    throw err;
  }
}

/**
 * Push a raw disk image as a slipway disk artifact. The file is read once, sequentially, in
 * chunk-size pieces; workers hash and compress; chunks go into bounded packs that are uploaded
 * while the next fill. Memory is bounded by the window of chunks in flight plus the packs being
 * uploaded, whatever the image size. The tag is written last, only when everything else is in.
 */
export async function pushDisk(opts: PushOptions): Promise<PushResult> {
  const chunkSizeBytes = opts.chunkSizeBytes ?? DEFAULT_CHUNK_BYTES;
  checkChunkSize(chunkSizeBytes);
  const packSizeBytes = opts.packSizeBytes ?? DEFAULT_PACK_BYTES;
  if (!Number.isSafeInteger(packSizeBytes) || packSizeBytes < chunkSizeBytes || packSizeBytes > MAX_PACK_BYTES) {
    throw new SlipwayError('INVALID_ARGUMENT', `pack size ${packSizeBytes} must be between the chunk size (${chunkSizeBytes}) and ${MAX_PACK_BYTES} bytes`);
  }
  const compression = opts.compression ?? 'zstd';
  const level = compression === 'zstd' ? (opts.zstdLevel ?? DEFAULT_ZSTD_LEVEL) : 0;
  const sizeBytes = await checkImageFile(opts.file);
  const chunkCount = chunkCountFor(sizeBytes, chunkSizeBytes);
  const { target, pool } = opts;
  const baseIndex = opts.changed ? opts.base?.index : undefined;
  if (opts.changed) {
    if (!baseIndex) throw new SlipwayError('INVALID_ARGUMENT', 'a delta push needs its base disk');
    if (baseIndex.sizeBytes !== sizeBytes || baseIndex.chunkSizeBytes !== chunkSizeBytes) {
      throw new SlipwayError('INVALID_ARGUMENT', `a delta must have its base's geometry: ${sizeBytes} bytes in ${chunkSizeBytes}-byte chunks against the base's ${baseIndex.sizeBytes} in ${baseIndex.chunkSizeBytes}`);
    }
  }

  const previous = await currentDiskAt(target, opts.tag);
  const repoDedup = opts.repositoryDedup ?? !opts.changed;
  const repositoryDisks = repoDedup === false ? [] : await recentRepositoryDisks(target, chunkSizeBytes, new Set(previous ? [previous.manifestDescriptor.digest] : []), repoDedup === true ? DEFAULT_REPOSITORY_DEDUP : repoDedup);
  // the target's own disks, most related first (the result's dedupedAgainst), are in the target by
  // construction; another store's disk lends chunks only where the target has its packs
  const dedupedAgainst = [...(opts.base ? [opts.base] : []), ...(previous ? [previous] : []), ...repositoryDisks];
  const known = knownChunksOf([...dedupedAgainst, ...(await packsInTarget(target, opts.dedupFrom ?? []))], chunkSizeBytes);

  const packs: (Descriptor | undefined)[] = [];
  const packOrdinal = new Map<string, number>();
  const entries: IndexEntry[] = [];
  const entryByDigest = new Map<string, number>();
  const map = new Uint32Array(chunkCount);
  let zeroChunks = 0;
  let reusedChunks = 0;
  let newChunks = 0;
  let storedBytes = 0;
  let uploadedPacks = 0;
  let uploadedBytes = 0;
  let readBytes = 0;

  let openPack: { ordinal: number; pieces: Buffer[]; bytes: number } | undefined;
  const uploads = new Set<Promise<void>>();
  let uploadError: unknown;

  const report = (phase: string): void => {
    opts.onProgress?.({ op: 'push', phase, doneBytes: readBytes, totalBytes: sizeBytes, uploadedBytes, chunks: chunkCount });
  };

  const uploadPack = async (ordinal: number, data: Buffer): Promise<void> => {
    const desc: Descriptor = { mediaType: MEDIA_TYPE_DISK_PACK, digest: sha256Digest(data), size: data.byteLength };
    packs[ordinal] = desc;
    if (await target.blobExists(desc.digest)) return;
    await target.pushBlob(desc, data);
    uploadedPacks++;
    uploadedBytes += data.byteLength;
    report('upload');
  };

  const sealPack = async (): Promise<void> => {
    if (!openPack) return;
    const { ordinal, pieces, bytes } = openPack;
    openPack = undefined;
    while (uploads.size >= UPLOADS_IN_FLIGHT) await Promise.race(uploads);
    if (uploadError) throw uploadError;
    const p = uploadPack(ordinal, Buffer.concat(pieces, bytes)).catch((err: unknown) => {
      uploadError ??= err;
    });
    uploads.add(p);
    void p.finally(() => uploads.delete(p));
  };

  const addChunk = async (n: number, enc: { digest: Buffer; zero: boolean; stored: Buffer; flags: number }): Promise<void> => {
    if (enc.zero) {
      map[n] = HOLE;
      zeroChunks++;
      return;
    }
    const key = enc.digest.toString('hex');
    const seen = entryByDigest.get(key);
    if (seen !== undefined) {
      map[n] = seen;
      return;
    }
    const reuse = known.get(key);
    let entry: IndexEntry;
    if (reuse) {
      let ordinal = packOrdinal.get(reuse.pack.digest);
      if (ordinal === undefined) {
        ordinal = packs.length;
        packs.push(reuse.pack);
        packOrdinal.set(reuse.pack.digest, ordinal);
      }
      entry = { digest: enc.digest, pack: ordinal, offset: reuse.offset, storedLength: reuse.storedLength, flags: reuse.flags };
      reusedChunks++;
      storedBytes += reuse.storedLength;
    } else {
      if (openPack && openPack.bytes + enc.stored.byteLength > packSizeBytes) await sealPack();
      if (!openPack) {
        openPack = { ordinal: packs.length, pieces: [], bytes: 0 };
        packs.push(undefined);
      }
      entry = { digest: enc.digest, pack: openPack.ordinal, offset: openPack.bytes, storedLength: enc.stored.byteLength, flags: enc.flags };
      openPack.pieces.push(enc.stored);
      openPack.bytes += enc.stored.byteLength;
      newChunks++;
      storedBytes += enc.stored.byteLength;
    }
    entryByDigest.set(key, entries.length);
    map[n] = entries.length;
    entries.push(entry);
  };

  let handle;
  try {
    handle = await open(opts.file, 'r');
  } catch (err) {
    throw fromFsError(err, opts.file, 'disk image');
  }
  try {
    // Read ahead while workers encode; results are consumed in chunk order so packs are deterministic.
    const window = pool.size * 4;
    const inflight: Promise<{ digest: Buffer; zero: boolean; stored: Buffer; flags: number }>[] = [];
    let next = 0;
    let consumed = 0;
    report('start');
    while (consumed < chunkCount) {
      while (next < chunkCount && inflight.length < window) {
        if (baseIndex && !(opts.changed as (n: number) => boolean)(next)) {
          // the base's chunk: its index entry stands (a hole stays a hole)
          const e = baseIndex.map[next] as number;
          const be = e === HOLE ? undefined : (baseIndex.entries[e] as IndexEntry);
          inflight.push(Promise.resolve(be ? { digest: be.digest, zero: false, stored: EMPTY, flags: be.flags } : { digest: EMPTY, zero: true, stored: EMPTY, flags: 0 }));
          readBytes += Math.min(chunkSizeBytes, sizeBytes - next * chunkSizeBytes);
          next++;
          continue;
        }
        const len = Math.min(chunkSizeBytes, sizeBytes - next * chunkSizeBytes);
        const buf = Buffer.allocUnsafeSlow(len);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await handle.read(buf, got, len - got, next * chunkSizeBytes + got);
          if (bytesRead === 0) throw new SlipwayError('INVALID_DISK_IMAGE', `${opts.file} shrank while it was read (at byte ${next * chunkSizeBytes + got})`);
          got += bytesRead;
        }
        readBytes += len;
        inflight.push(pool.encode(buf, level));
        next++;
      }
      const enc = await (inflight.shift() as Promise<{ digest: Buffer; zero: boolean; stored: Buffer; flags: number }>);
      await addChunk(consumed, enc);
      consumed++;
      if (uploadError) throw uploadError;
      if ((consumed & 63) === 0) report('chunk');
    }
    await sealPack();
    await Promise.all(uploads);
    if (uploadError) throw uploadError;
  } finally {
    await Promise.allSettled(uploads);
    await handle.close();
  }

  const index: ChunkIndex = { sizeBytes, chunkSizeBytes, chunkCount, packs: packs as Descriptor[], entries, map };
  const rawIndex = encodeIndex(index);
  const indexBlob = compressIndex(rawIndex);
  const indexDesc: Descriptor = { mediaType: MEDIA_TYPE_DISK_INDEX, digest: sha256Digest(indexBlob), size: indexBlob.byteLength };
  if (!(await target.blobExists(indexDesc.digest))) await target.pushBlob(indexDesc, indexBlob);

  const config: DiskConfig = {
    formatVersion: FORMAT_VERSION,
    sizeBytes,
    chunkSizeBytes,
    chunkCount,
    compression,
    index: indexDesc,
    base: opts.base ? opts.base.manifestDescriptor : null,
    stats: { zeroChunks, uniqueChunks: entries.length, storedBytes, packs: packs.length },
  };
  const configBlob = Buffer.from(JSON.stringify(config));
  const configDesc: Descriptor = { mediaType: MEDIA_TYPE_DISK_CONFIG, digest: sha256Digest(configBlob), size: configBlob.byteLength };
  if (!(await target.blobExists(configDesc.digest))) await target.pushBlob(configDesc, configBlob);

  // a small config and index ride in the manifest too (image-spec 1.1 `data`): a disk then opens in
  // the manifest's round trip; the blobs stay pushed
  const manifest = buildDiskManifest({
    config: withEmbeddedData(configDesc, configBlob),
    index: withEmbeddedData(indexDesc, indexBlob),
    packs: packs as Descriptor[],
    ...(opts.base ? { subject: opts.base.manifestDescriptor } : {}),
    ...(opts.annotations ? { annotations: opts.annotations } : {}),
  });
  const manifestBody = Buffer.from(JSON.stringify(manifest));
  const manifestDesc = await target.pushManifest(manifestBody, manifest.mediaType as string, opts.tag);
  report('done');
  return { manifest: manifestDesc, manifestBody, config, index, uploadedPacks, uploadedBytes, reusedChunks, newChunks, dedupedAgainst };
}
