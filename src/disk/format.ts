/**
 * The slipway disk artifact format, version 1 (docs/format.md is its prose twin: change both).
 *
 * A disk is cut into fixed chunks; each non-zero chunk is stored once (zstd or raw) inside a pack
 * blob; all-zero chunks are holes. The chunk index blob maps chunk number -> entry, and an entry
 * is (pack, offset, stored length, sha256 of the uncompressed chunk, flags). Everything read
 * from a registry is untrusted: `decodeIndex` and `parseDiskConfig` check every field.
 */
import { SlipwayError } from '../errors.js';
import { parseDigest } from '../oci/digest.js';
import { ANNOTATION_TITLE, MEDIA_TYPE_OCI_MANIFEST, type Descriptor, type ImageManifest } from '../oci/types.js';

export const FORMAT_VERSION = 1;
export const ARTIFACT_TYPE_DISK = 'application/vnd.slipway.disk.v1';
export const MEDIA_TYPE_DISK_CONFIG = 'application/vnd.slipway.disk.config.v1+json';
export const MEDIA_TYPE_DISK_INDEX = 'application/vnd.slipway.disk.index.v1+zstd';
export const MEDIA_TYPE_DISK_PACK = 'application/vnd.slipway.disk.pack.v1';

export const SECTOR_BYTES = 512;
export const MIN_CHUNK_BYTES = 4096;
export const MAX_CHUNK_BYTES = 64 << 20;
/** Default chunk size: see docs/format.md "Choosing the chunk size" for the measurement. */
export const DEFAULT_CHUNK_BYTES = 512 << 10;
/** Default bound on a pack's size; a server that ignores Range sends at most this much for one chunk. */
export const DEFAULT_PACK_BYTES = 8 << 20;
export const MAX_PACK_BYTES = 1 << 30;

export const FLAG_ZSTD = 1;
export const HOLE = 0xffffffff;

export type Compression = 'zstd' | 'none';

export interface DiskConfig {
  formatVersion: number;
  sizeBytes: number;
  chunkSizeBytes: number;
  chunkCount: number;
  compression: Compression;
  index: Descriptor;
  /** The disk this one is a delta of (snapshots), by manifest descriptor. */
  base: Descriptor | null;
  stats: DiskStats;
}

export interface DiskStats {
  /** all-zero chunks, stored as holes */
  zeroChunks: number;
  /** distinct non-zero chunk contents */
  uniqueChunks: number;
  /** bytes of all chunks as stored in packs (compressed where it paid) */
  storedBytes: number;
  packs: number;
}

export interface IndexEntry {
  /** raw sha256 of the uncompressed chunk */
  digest: Buffer;
  pack: number;
  offset: number;
  storedLength: number;
  flags: number;
}

export interface ChunkIndex {
  sizeBytes: number;
  chunkSizeBytes: number;
  chunkCount: number;
  /** pack blobs by ordinal: every one also appears in the manifest's layers */
  packs: Descriptor[];
  entries: IndexEntry[];
  /** chunk number -> entry ordinal, HOLE for an all-zero chunk */
  map: Uint32Array;
}

const MAGIC = Buffer.from('SLWYIDX1', 'ascii');
const HEADER_BYTES = 48;
const PACK_RECORD_BYTES = 40;
const ENTRY_BYTES = 48;

export function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function checkChunkSize(chunkSizeBytes: number): void {
  if (!isPowerOfTwo(chunkSizeBytes) || chunkSizeBytes < MIN_CHUNK_BYTES || chunkSizeBytes > MAX_CHUNK_BYTES) {
    throw new SlipwayError('INVALID_ARGUMENT', `chunk size ${chunkSizeBytes} must be a power of two between ${MIN_CHUNK_BYTES} and ${MAX_CHUNK_BYTES} bytes`);
  }
}

export function chunkCountFor(sizeBytes: number, chunkSizeBytes: number): number {
  return Math.ceil(sizeBytes / chunkSizeBytes);
}

/** Uncompressed length of chunk `n` (the last chunk may be short). */
export function chunkLength(index: { sizeBytes: number; chunkSizeBytes: number }, n: number): number {
  return Math.min(index.chunkSizeBytes, index.sizeBytes - n * index.chunkSizeBytes);
}

/** Serialise an index (uncompressed; the caller zstd-compresses it into the blob). */
export function encodeIndex(index: ChunkIndex): Buffer {
  const total = HEADER_BYTES + index.packs.length * PACK_RECORD_BYTES + index.entries.length * ENTRY_BYTES + index.chunkCount * 4;
  const buf = Buffer.alloc(total);
  MAGIC.copy(buf, 0);
  buf.writeUInt32LE(FORMAT_VERSION, 8);
  buf.writeUInt32LE(Math.log2(index.chunkSizeBytes), 12);
  buf.writeBigUInt64LE(BigInt(index.sizeBytes), 16);
  buf.writeUInt32LE(index.chunkCount, 24);
  buf.writeUInt32LE(index.packs.length, 28);
  buf.writeUInt32LE(index.entries.length, 32);
  let off = HEADER_BYTES;
  for (const pack of index.packs) {
    Buffer.from(parseDigest(pack.digest).hex, 'hex').copy(buf, off);
    buf.writeBigUInt64LE(BigInt(pack.size), off + 32);
    off += PACK_RECORD_BYTES;
  }
  for (const e of index.entries) {
    e.digest.copy(buf, off);
    buf.writeUInt32LE(e.pack, off + 32);
    buf.writeUInt32LE(e.offset, off + 36);
    buf.writeUInt32LE(e.storedLength, off + 40);
    buf.writeUInt32LE(e.flags, off + 44);
    off += ENTRY_BYTES;
  }
  Buffer.from(index.map.buffer, index.map.byteOffset, index.map.byteLength).copy(buf, off);
  return buf;
}

function corrupt(what: string): SlipwayError {
  return new SlipwayError('CORRUPT_INDEX', `chunk index: ${what}`);
}

/**
 * Parse and check an index. `maxStoredChunkBytes` bounds a stored chunk (zstd's worst case for
 * the chunk size). Every pack record, entry and map slot is range-checked here, once, so readers
 * can index without checks of their own.
 */
export function decodeIndex(buf: Buffer, maxStoredChunkBytes: (chunkSizeBytes: number) => number): ChunkIndex {
  if (buf.byteLength < HEADER_BYTES || !buf.subarray(0, 8).equals(MAGIC)) throw corrupt('bad magic');
  const version = buf.readUInt32LE(8);
  if (version !== FORMAT_VERSION) throw new SlipwayError('UNSUPPORTED_FORMAT_VERSION', `chunk index version ${version} (this slipway reads ${FORMAT_VERSION})`);
  const log2 = buf.readUInt32LE(12);
  if (log2 > 30) throw corrupt(`chunk size 2^${log2}`);
  const chunkSizeBytes = 2 ** log2;
  checkChunkSize(chunkSizeBytes);
  const sizeBig = buf.readBigUInt64LE(16);
  if (sizeBig > BigInt(Number.MAX_SAFE_INTEGER) || sizeBig % BigInt(SECTOR_BYTES) !== 0n) throw corrupt(`disk size ${sizeBig}`);
  const sizeBytes = Number(sizeBig);
  const chunkCount = buf.readUInt32LE(24);
  if (chunkCount !== chunkCountFor(sizeBytes, chunkSizeBytes)) throw corrupt(`chunk count ${chunkCount} does not fit a ${sizeBytes}-byte disk`);
  const packCount = buf.readUInt32LE(28);
  const entryCount = buf.readUInt32LE(32);
  const expected = HEADER_BYTES + packCount * PACK_RECORD_BYTES + entryCount * ENTRY_BYTES + chunkCount * 4;
  if (buf.byteLength !== expected) throw corrupt(`length ${buf.byteLength}, header implies ${expected}`);
  let off = HEADER_BYTES;
  const packs: Descriptor[] = [];
  for (let i = 0; i < packCount; i++) {
    const size = buf.readBigUInt64LE(off + 32);
    if (size > BigInt(MAX_PACK_BYTES)) throw corrupt(`pack ${i} size ${size}`);
    packs.push({ mediaType: MEDIA_TYPE_DISK_PACK, digest: `sha256:${buf.toString('hex', off, off + 32)}`, size: Number(size) });
    off += PACK_RECORD_BYTES;
  }
  const maxStored = maxStoredChunkBytes(chunkSizeBytes);
  const entries: IndexEntry[] = [];
  for (let i = 0; i < entryCount; i++) {
    const e: IndexEntry = {
      digest: Buffer.from(buf.subarray(off, off + 32)),
      pack: buf.readUInt32LE(off + 32),
      offset: buf.readUInt32LE(off + 36),
      storedLength: buf.readUInt32LE(off + 40),
      flags: buf.readUInt32LE(off + 44),
    };
    const pack = packs[e.pack];
    if (!pack) throw corrupt(`entry ${i} names pack ${e.pack} of ${packCount}`);
    if (e.storedLength === 0 || e.storedLength > maxStored) throw corrupt(`entry ${i} stored length ${e.storedLength}`);
    if (e.offset + e.storedLength > pack.size) throw corrupt(`entry ${i} runs past the end of pack ${e.pack}`);
    if ((e.flags & ~FLAG_ZSTD) !== 0) throw corrupt(`entry ${i} has unknown flags ${e.flags}`);
    if ((e.flags & FLAG_ZSTD) === 0 && e.storedLength > chunkSizeBytes) throw corrupt(`raw entry ${i} is longer than a chunk`);
    entries.push(e);
    off += ENTRY_BYTES;
  }
  const map = new Uint32Array(chunkCount);
  for (let n = 0; n < chunkCount; n++) {
    const v = buf.readUInt32LE(off + n * 4);
    if (v !== HOLE && v >= entryCount) throw corrupt(`chunk ${n} maps to entry ${v} of ${entryCount}`);
    if (v !== HOLE) {
      const e = entries[v] as IndexEntry;
      const len = Math.min(chunkSizeBytes, sizeBytes - n * chunkSizeBytes);
      if ((e.flags & FLAG_ZSTD) === 0 && e.storedLength !== len) throw corrupt(`raw entry ${v} has ${e.storedLength} bytes for a ${len}-byte chunk ${n}`);
    }
    map[n] = v;
  }
  return { sizeBytes, chunkSizeBytes, chunkCount, packs, entries, map };
}

export function buildDiskManifest(args: { config: Descriptor; index: Descriptor; packs: Descriptor[]; subject?: Descriptor; annotations?: Record<string, string> }): ImageManifest {
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_OCI_MANIFEST,
    artifactType: ARTIFACT_TYPE_DISK,
    config: args.config,
    layers: [
      { ...args.index, annotations: { [ANNOTATION_TITLE]: 'index' } },
      ...args.packs.map((p, i) => ({ mediaType: MEDIA_TYPE_DISK_PACK, digest: p.digest, size: p.size, annotations: { [ANNOTATION_TITLE]: `pack-${String(i).padStart(5, '0')}` } })),
    ],
  };
  if (args.subject) manifest.subject = args.subject;
  if (args.annotations && Object.keys(args.annotations).length > 0) manifest.annotations = args.annotations;
  return manifest;
}

function fail(reference: string, why: string): SlipwayError {
  return new SlipwayError('NOT_A_SLIPWAY_DISK', `${reference} is not a slipway disk: ${why}`, { context: { reference } });
}

function isDescriptor(d: unknown): d is Descriptor {
  const x = d as Descriptor;
  return typeof x === 'object' && x !== null && typeof x.mediaType === 'string' && typeof x.digest === 'string' && Number.isSafeInteger(x.size) && x.size >= 0;
}

/** Check that a manifest is a slipway disk and return it typed. */
export function parseDiskManifest(body: Buffer, reference: string): ImageManifest {
  let doc: ImageManifest;
  try {
    doc = JSON.parse(body.toString('utf8')) as ImageManifest;
  } catch {
    throw fail(reference, 'manifest is not JSON');
  }
  if (doc?.schemaVersion !== 2) throw fail(reference, 'not an OCI manifest (schemaVersion != 2)');
  if (doc.mediaType !== undefined && doc.mediaType !== MEDIA_TYPE_OCI_MANIFEST) throw fail(reference, `manifest media type ${doc.mediaType}`);
  if (!isDescriptor(doc.config) || doc.config.mediaType !== MEDIA_TYPE_DISK_CONFIG) {
    throw fail(reference, `config media type ${JSON.stringify((doc.config as Descriptor | undefined)?.mediaType)} (want ${MEDIA_TYPE_DISK_CONFIG})`);
  }
  if (!Array.isArray(doc.layers) || doc.layers.length === 0 || !doc.layers.every(isDescriptor)) throw fail(reference, 'no layers');
  if (doc.layers[0]?.mediaType !== MEDIA_TYPE_DISK_INDEX) throw fail(reference, 'first layer is not a chunk index');
  for (const l of doc.layers) parseDigest(l.digest);
  if (doc.subject !== undefined && !isDescriptor(doc.subject)) throw fail(reference, 'malformed subject');
  return doc;
}

/** Check a config blob against the format's rules and the manifest that names it. */
export function parseDiskConfig(body: Buffer, manifest: ImageManifest, reference: string): DiskConfig {
  let c: DiskConfig;
  try {
    c = JSON.parse(body.toString('utf8')) as DiskConfig;
  } catch {
    throw fail(reference, 'config is not JSON');
  }
  if (c.formatVersion !== FORMAT_VERSION) {
    throw new SlipwayError('UNSUPPORTED_FORMAT_VERSION', `${reference}: disk format version ${String(c.formatVersion)} (this slipway reads ${FORMAT_VERSION})`);
  }
  if (!Number.isSafeInteger(c.sizeBytes) || c.sizeBytes <= 0 || c.sizeBytes % SECTOR_BYTES !== 0) throw fail(reference, `config sizeBytes ${String(c.sizeBytes)}`);
  checkChunkSize(c.chunkSizeBytes);
  if (c.chunkCount !== chunkCountFor(c.sizeBytes, c.chunkSizeBytes)) throw fail(reference, 'config chunkCount does not match its size');
  if (c.compression !== 'zstd' && c.compression !== 'none') throw fail(reference, `config compression ${String(c.compression)}`);
  if (!isDescriptor(c.index) || c.index.digest !== manifest.layers[0]?.digest) throw fail(reference, 'config index does not match the manifest');
  if (c.base !== null && c.base !== undefined && !isDescriptor(c.base)) throw fail(reference, 'config base is malformed');
  c.base = c.base ?? null;
  return c;
}
