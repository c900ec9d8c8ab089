import { availableParallelism } from 'node:os';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { ChunkCoder } from '../disk/chunk-codec.js';
import { SlipwayError, type ErrorCode } from '../errors.js';
import { storedBuffers } from './stored-buffers.js';

export type WorkerRequest =
  | { id: number; op: 'encode'; data: Uint8Array; level: number }
  | { id: number; op: 'decode'; stored: Uint8Array; flags: number; length: number; digest: Uint8Array; what: string; persist?: PersistTo; fileOnly?: boolean; giveBack?: boolean }
  | { id: number; op: 'ping' };

export type WorkerResponse =
  | { id: number; ok: true; digest: Uint8Array; zero: boolean; stored: Uint8Array; flags: number }
  | { id: number; ok: true; data: Uint8Array; persistError?: string; storedBack?: Uint8Array }
  | { id: number; ok: true; pong: true }
  /** a decode's file is in place, not yet durable (PersistTo.visibleFirst); its answer follows */
  | { id: number; ok: true; visible: true }
  | { id: number; ok: false; code: string; message: string };

/** Where a decoded chunk's cache file goes: written by the worker, temp file then rename. */
export interface PersistTo {
  tmpPath: string;
  finalPath: string;
  /**
   * Rename before the fdatasync and say so at once (WorkerPool.decode's `onVisible`); the answer
   * comes once the file is durable (util/atomic-file.ts, writeAtomicOverlapped's `onVisible`).
   */
  visibleFirst?: boolean;
  /** put in place without replacing a file already there (util/atomic-file.ts, `noReplace`) */
  noReplace?: boolean;
}

/**
 * A decoded chunk of `length` bytes; `persisted` when the worker wrote its cache file,
 * `persistError` (an errno code) when that failed. `data` is empty when only the file was asked
 * for (`fileOnly`) and the file was written.
 */
export interface Decoded {
  data: Buffer;
  length: number;
  persisted: boolean;
  persistError?: string;
}

type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never;

interface Pending {
  resolve: (res: WorkerResponse) => void;
  reject: (err: Error) => void;
  /** a decode's file is in place (PersistTo.visibleFirst), before its answer */
  visible?: () => void;
}

/**
 * The compiled worker script. Under vitest slipway runs from src/*.ts; workers need JavaScript,
 * so they load the build in dist/ (the test command builds first).
 */
function workerUrl(): URL {
  const here = new URL('./chunk-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  const fromSource = new URL('../../dist/workers/chunk-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(fromSource))) return fromSource;
  throw new SlipwayError('IO_ERROR', `worker script not found at ${fileURLToPath(here)}: run npm run build`);
}

/**
 * A pool of worker threads for hashing and compression: one per core by default, so push and pull
 * use every core while the main thread does I/O. Work is handed to the least-loaded worker.
 */
export class WorkerPool implements ChunkCoder {
  private readonly workers: { worker: Worker; inflight: number }[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;

  constructor(size = Math.max(1, availableParallelism())) {
    const url = workerUrl();
    for (let i = 0; i < size; i++) {
      const worker = new Worker(url);
      const slot = { worker, inflight: 0 };
      worker.on('message', (res: WorkerResponse) => {
        if ('visible' in res) {
          this.pending.get(res.id)?.visible?.();
          return;
        }
        slot.inflight--;
        // an idle pool must not keep the process alive; a busy one must
        if (slot.inflight === 0) worker.unref();
        const p = this.pending.get(res.id);
        if (!p) return;
        this.pending.delete(res.id);
        p.resolve(res);
      });
      worker.on('error', (err) => this.failAll(err));
      worker.unref();
      this.workers.push(slot);
    }
  }

  get size(): number {
    return this.workers.length;
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  run(req: DistributiveOmit<WorkerRequest, 'id'>, transfer: ArrayBuffer[] = [], visible?: () => void): Promise<WorkerResponse> {
    if (this.closed) return Promise.reject(new SlipwayError('ABORTED', 'worker pool is closed'));
    const id = this.nextId++;
    let best = this.workers[0];
    for (const w of this.workers) if (best === undefined || w.inflight < best.inflight) best = w;
    if (!best) return Promise.reject(new SlipwayError('IO_ERROR', 'worker pool has no workers'));
    if (best.inflight++ === 0) best.worker.ref();
    const slot = best;
    return new Promise<WorkerResponse>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...(visible ? { visible } : {}) });
      slot.worker.postMessage({ ...req, id }, transfer);
    }).then((res) => {
      if (!res.ok) throw new SlipwayError(res.code as ErrorCode, res.message);
      return res;
    });
  }

  /** Resolves once every worker has loaded its code and answered (workers take ~100 ms to start). */
  async warm(): Promise<void> {
    await Promise.all(this.workers.map(() => this.run({ op: 'ping' })));
  }

  async encode(data: Buffer, level: number): Promise<{ digest: Buffer; zero: boolean; stored: Buffer; flags: number }> {
    const res = await this.run({ op: 'encode', data, level }, ownsBuffer(data) ? [data.buffer as ArrayBuffer] : []);
    if (!('stored' in res)) throw new SlipwayError('IO_ERROR', 'worker answered encode with the wrong shape');
    return { digest: toBuffer(res.digest), zero: res.zero, stored: toBuffer(res.stored), flags: res.flags };
  }

  /**
   * Decompress and verify a chunk on a worker, which writes its tier-1 file when `persist` says
   * where. `fileOnly` (with `persist`): the caller needs the file, not the bytes; the worker
   * decodes into a buffer it reuses and hands no bytes back, unless the file could not be written.
   * `onVisible` (with `persist`): called as soon as the file is in place under its name, before it
   * is durable; the promise resolves once it is (PersistTo.visibleFirst).
   */
  async decode(stored: Buffer, flags: number, length: number, digest: Buffer, what: string, persist?: PersistTo, fileOnly = false, onVisible?: () => void): Promise<Decoded> {
    // Structured clone of a view copies its whole ArrayBuffer (a slice of an 8 MiB pack would
    // copy the pack): give the worker a buffer of its own, transferred, not cloned. A recycled
    // one (stored-buffers.ts) goes whole and comes back with the answer.
    const giveBack = storedBuffers.owns(stored);
    const own = giveBack || ownsBuffer(stored) ? stored : Buffer.from(stored.buffer.slice(stored.byteOffset, stored.byteOffset + stored.byteLength));
    const early = persist !== undefined && onVisible !== undefined;
    const res = await this.run({ op: 'decode', stored: own, flags, length, digest: Uint8Array.from(digest), what, giveBack, ...(persist ? { persist: early ? { ...persist, visibleFirst: true } : persist, fileOnly } : {}) }, own.byteLength > 0 ? [own.buffer as ArrayBuffer] : [], early ? onVisible : undefined);
    if (!('data' in res)) throw new SlipwayError('IO_ERROR', 'worker answered decode with the wrong shape');
    if (res.storedBack) storedBuffers.give(res.storedBack.buffer as ArrayBuffer);
    return { data: toBuffer(res.data), length, persisted: persist !== undefined && res.persistError === undefined, ...(res.persistError ? { persistError: res.persistError } : {}) };
  }


  async close(): Promise<void> {
    this.closed = true;
    this.failAll(new SlipwayError('ABORTED', 'worker pool closed'));
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** A buffer may be transferred only when it alone spans its ArrayBuffer (not Node's shared pool). */
function ownsBuffer(b: Buffer): boolean {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.byteLength > 0;
}
