/**
 * Chunk encoding and decoding, the CPU-heavy half of push and pull: sha256, zero detection,
 * zstd. Runs inside worker threads (chunk-worker.ts) and, for small jobs, on the caller's thread.
 */
import { createHash } from 'node:crypto';
import { closeSync, fdatasyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { createRequire } from 'node:module';
import { SlipwayError } from '../errors.js';
import { FLAG_ZSTD } from '../disk/format.js';

const require = createRequire(import.meta.url);

interface ZstdBinding {
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  compressBound(size: number): number;
}

const zstd = require('zstd-napi/binding') as ZstdBinding;

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
   * registry) and check the sha256. Throws DIGEST_MISMATCH when anything is off.
   */
  decode(stored: Uint8Array, flags: number, length: number, digest: Buffer, what: string): Buffer {
    let out: Buffer;
    if (flags & FLAG_ZSTD) {
      out = Buffer.allocUnsafeSlow(length);
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

/**
 * Write a verified chunk to its cache file crash-safely (temp file, fdatasync, rename), on the
 * calling thread: the worker that decoded it, so the daemon's event loop does no file I/O for it.
 * Returns the errno code on failure (ENOSPC is the caller's to handle), or undefined.
 */
export function persistChunk(data: Uint8Array, tmpPath: string, finalPath: string): string | undefined {
  try {
    const fd = openSync(tmpPath, 'wx', 0o644);
    try {
      for (let off = 0; off < data.byteLength; ) off += writeSync(fd, data, off, data.byteLength - off);
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      renameSync(tmpPath, finalPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      mkdirSync(dirname(finalPath), { recursive: true });
      renameSync(tmpPath, finalPath);
    }
    return undefined;
  } catch (err) {
    rmSync(tmpPath, { force: true });
    return (err as NodeJS.ErrnoException).code ?? 'EIO';
  }
}
