/**
 * The daemon side of the miss protocol (docs/vhost-user-blk.md): slipway-blk sends FETCH n for a
 * chunk that is not in tier 1; we get it there through the cache's tiers (verified) and answer.
 * Requests from a connection are served concurrently; replies carry the chunk number.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { constants } from 'node:os';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { HOLE, type IndexEntry } from '../disk/format.js';
import type { LazyDisk } from '../cache/lazy-disk.js';
import type { Logger } from '../util/log.js';

/** The protocol's words, as vhost-user-blk/miss_wire.h has them (docs/vhost-user-blk.md). */
const WIRE = { requestMagic: 0x534c4651, replyMagic: 0x534c4652, opFetch: 1 } as const;
const { EIO, EINVAL, ENOSPC } = constants.errno;

export interface MissServerStats {
  requests: number;
  failures: number;
  /** when the last request came (performance.now() ms; 0 before the first) */
  lastRequestAt: number;
}

export interface MissServer {
  readonly stats: MissServerStats;
  /** why the last failed fetch failed (a DIGEST_MISMATCH from a corrupted pack, the registry's error) */
  readonly lastError: unknown;
  close(): Promise<void>;
}

function reply(sock: Socket, status: number, chunk: bigint): void {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(WIRE.replyMagic, 0);
  b.writeInt32LE(status, 4);
  b.writeBigUInt64LE(chunk, 8);
  if (!sock.destroyed) sock.write(b);
}

/** What the miss server needs of the host chunk cache: tier 1's files (ChunkCache fits). */
export interface MissChunks {
  logger: Logger;
  /** whether tier 1 has chunk `hex` (its row: its file, durable) */
  has(hex: string): boolean;
  /** where tier 1 keeps chunk `hex`'s file (the backend reads it there) */
  chunkPath(hex: string): string;
  /** give a verified chunk its tier-1 file; false when tier 1 is full */
  putChunk(hex: string, data: Buffer): Promise<boolean>;
}

/**
 * Serve the miss protocol for `disk` on the Unix socket `path` (replacing a stale one): every FETCH
 * brings its chunk into tier 1 through the cache's tiers and answers with its status.
 * `onRequest` is called with the chunk number of every well-formed FETCH, as it arrives.
 */
export async function startMissServer(path: string, disk: LazyDisk, chunks: MissChunks, onRequest?: (chunk: number) => void): Promise<MissServer> {
  const logger = chunks.logger;
  const stats: MissServerStats = { requests: 0, failures: 0, lastRequestAt: 0 };
  let lastError: unknown;
  const sockets = new Set<Socket>();
  const { index } = disk.artifact;
  const fetchChunk = async (n: number): Promise<number> => {
    const e = index.map[n];
    if (e === undefined || e === HOLE) return -EINVAL;
    const hex = (index.entries[e] as IndexEntry).digest.toString('hex');
    // the backend reads the chunk's file: its bytes need not come back here
    const got = await disk.readChunk(n, 'demand', true);
    // no bytes back: its file is in place (its row may follow: it is read before it is durable,
    // see DiskTier.visibleFirst), unless tier 1 had no room for its row and removed it
    if (got.byteLength === 0 && existsSync(chunks.chunkPath(hex))) return 0;
    // a chunk that came from memory, or whose file could not be kept, may have no file: the
    // backend reads files
    if (!chunks.has(hex) && !(await chunks.putChunk(hex, got.byteLength > 0 ? got : await disk.readChunk(n)))) return -ENOSPC;
    return 0;
  };
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    let pending = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 16) {
        const msg = pending.subarray(0, 16);
        pending = pending.subarray(16);
        const chunk = msg.readBigUInt64LE(8);
        if (msg.readUInt32LE(0) !== WIRE.requestMagic || msg.readUInt32LE(4) !== WIRE.opFetch || chunk >= BigInt(index.chunkCount)) {
          logger.warn('malformed miss request from the backend; closing its connection');
          sock.destroy();
          return;
        }
        stats.requests++;
        stats.lastRequestAt = performance.now();
        onRequest?.(Number(chunk));
        fetchChunk(Number(chunk)).then(
          (status) => reply(sock, status, chunk),
          (err: unknown) => {
            stats.failures++;
            lastError = err;
            logger.warn('chunk fetch for the backend failed', { disk: disk.reference, chunk: Number(chunk), error: (err as Error).message });
            reply(sock, -EIO, chunk);
          },
        );
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => sockets.delete(sock));
  });
  await rm(path, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  return {
    stats,
    get lastError() {
      return lastError;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(path, { force: true });
    },
  };
}
