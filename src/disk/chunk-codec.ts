/**
 * The format's codec, and slipway's one zstd binding: chunk encoding and decoding (sha256, zero
 * detection, zstd), the CPU-heavy half of push and pull, and the index blob's compression. Chunks
 * are coded in worker threads (src/workers runs this code on every core) and, for small jobs, on
 * the caller's thread; push and pull see only the `ChunkCoder` interface.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { SlipwayError } from '../errors.js';
import { FLAG_ZSTD } from './format.js';

const require = createRequire(import.meta.url);

interface ZstdBinding {
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  compress(dst: Uint8Array, src: Uint8Array, level: number): number;
  decompress(dst: Uint8Array, src: Uint8Array): number;
  compressBound(size: number): number;
  getFrameContentSize(frame: Uint8Array): number | null;
}

const zstd = require('zstd-napi/binding') as ZstdBinding;

/** The zstd level of the index blob: it is small and read by every pull and boot. */
const INDEX_ZSTD_LEVEL = 9;

/** An encoded index blob of a serialised index (format.ts `encodeIndex`). */
export function compressIndex(rawIndex: Buffer): Buffer {
  const scratch = Buffer.allocUnsafe(zstd.compressBound(rawIndex.byteLength));
  return Buffer.from(scratch.subarray(0, zstd.compress(scratch, rawIndex, INDEX_ZSTD_LEVEL)));
}

/** Decompress an untrusted index blob into at most `bound` bytes. */
export function decompressIndex(blob: Buffer, bound: number): Buffer {
  const declared = zstd.getFrameContentSize(blob);
  if (declared !== null && declared > bound) throw new SlipwayError('CORRUPT_INDEX', `chunk index claims ${declared} bytes, more than the ${bound} its disk can need`);
  const out = Buffer.allocUnsafe(declared ?? bound);
  let n: number;
  try {
    n = zstd.decompress(out, blob);
  } catch (err) {
    throw new SlipwayError('CORRUPT_INDEX', `chunk index blob does not decompress: ${(err as Error).message}`);
  }
  return out.subarray(0, n);
}

export function maxStoredChunkBytes(chunkSizeBytes: number): number {
  return zstd.compressBound(chunkSizeBytes);
}

export interface EncodedChunk {
  /** raw sha256 of the uncompressed bytes, empty for a zero chunk */
  digest: Buffer;
  zero: boolean;
  stored: Buffer;
  flags: number;
}

/**
 * What push and pull need to code chunks: the worker pool (src/workers/pool.ts) is one, running
 * `ChunkCodec` on every core. `size` is how many chunks it codes at once.
 */
export interface ChunkCoder {
  readonly size: number;
  encode(data: Buffer, level: number): Promise<EncodedChunk>;
  decode(stored: Buffer, flags: number, length: number, digest: Buffer, what: string): Promise<{ data: Buffer }>;
}

export class ChunkCodec {
  private readonly cctx = new zstd.CCtx();
  private readonly dctx = new zstd.DCtx();
  private zeros = Buffer.alloc(0);
  private scratch = Buffer.alloc(0);

  isZero(data: Buffer): boolean {
    if (this.zeros.byteLength < data.byteLength) this.zeros = Buffer.alloc(data.byteLength);
    return data.equals(this.zeros.subarray(0, data.byteLength));
  }

  /** Hash, detect zeros, compress at `level` (0 = store raw); raw is kept when zstd saves < 1/32. */
  encode(data: Buffer, level: number): EncodedChunk {
    if (this.isZero(data)) return { digest: Buffer.alloc(0), zero: true, stored: Buffer.alloc(0), flags: 0 };
    const digest = createHash('sha256').update(data).digest();
    if (level > 0) {
      const bound = zstd.compressBound(data.byteLength);
      if (this.scratch.byteLength < bound) this.scratch = Buffer.allocUnsafe(bound);
      const n = this.cctx.compress(this.scratch, data, level);
      if (n < data.byteLength - (data.byteLength >> 5)) {
        // its own ArrayBuffer (not Node's shared pool) so that it can be transferred between threads
        const stored = Buffer.allocUnsafeSlow(n);
        this.scratch.copy(stored, 0, 0, n);
        return { digest, zero: false, stored, flags: FLAG_ZSTD };
      }
    }
    return { digest, zero: false, stored: data, flags: 0 };
  }

  /**
   * Decompress into exactly `length` bytes (never more: the bytes come from an untrusted
   * registry) and check the sha256. Throws DIGEST_MISMATCH when anything is off. `into`, when
   * given and large enough, receives the bytes (a buffer its owner reuses: the result is a view of
   * it); otherwise a buffer of their own is allocated.
   */
  decode(stored: Uint8Array, flags: number, length: number, digest: Buffer, what: string, into?: Buffer): Buffer {
    let out: Buffer;
    if (flags & FLAG_ZSTD) {
      out = into && into.byteLength >= length ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
      let n: number;
      try {
        n = this.dctx.decompress(out, stored);
      } catch (err) {
        throw new SlipwayError('DIGEST_MISMATCH', `${what}: stored bytes are not a valid zstd frame of ${length} bytes (${(err as Error).message})`);
      }
      if (n !== length) throw new SlipwayError('DIGEST_MISMATCH', `${what}: decompressed to ${n} bytes, expected ${length}`);
    } else {
      if (stored.byteLength !== length) throw new SlipwayError('DIGEST_MISMATCH', `${what}: raw chunk has ${stored.byteLength} bytes, expected ${length}`);
      out = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength);
    }
    const actual = createHash('sha256').update(out).digest();
    if (!actual.equals(digest)) {
      throw new SlipwayError('DIGEST_MISMATCH', `${what}: content has sha256:${actual.toString('hex')}, index says sha256:${digest.toString('hex')}`);
    }
    return out;
  }
}
