import { parentPort } from 'node:worker_threads';
import { ChunkCodec } from '../disk/chunk-codec.js';
import { writeAtomicOverlapped } from '../util/atomic-file.js';
import type { WorkerRequest, WorkerResponse } from './pool.js';
import { CHUNK_FILE_BACKDATE_MS } from '../util/atomic-file.js';

const codec = new ChunkCodec();
/** where chunks only written to their file are decoded: reused, so no fresh memory per chunk */
let scratch = Buffer.alloc(0);

/**
 * Write a verified chunk to its cache file (util/atomic-file.ts, as the disk tier writes one) from
 * this thread, so the daemon's event loop does no file I/O for it; the wait for the disk is off
 * this thread, which decodes the next chunk meanwhile. Resolves with the errno code on failure
 * (ENOSPC is the caller's to handle), or undefined once the file is in place and durable;
 * `onVisible`, when given, as soon as it is in place (util/atomic-file.ts).
 */
function persistChunk(data: Uint8Array, tmpPath: string, finalPath: string, noReplace: boolean, onVisible?: () => void): Promise<string | undefined> {
  return writeAtomicOverlapped(finalPath, data, { tmpPath, timesMs: Date.now() - CHUNK_FILE_BACKDATE_MS, noReplace, ...(onVisible ? { onVisible } : {}) }).then(
    () => undefined,
    (err: unknown) => (err as NodeJS.ErrnoException).code ?? 'EIO',
  );
}

function failure(id: number, err: unknown): WorkerResponse {
  const e = err as { code?: string; message?: string };
  return { id, ok: false, code: e.code ?? 'IO_ERROR', message: e.message ?? String(err) };
}

/** The answer to a decode: the bytes (none when only the file was wanted and written), and the stored bytes given back. */
function decoded(req: Extract<WorkerRequest, { op: 'decode' }>, out: Uint8Array, persistError: string | undefined): { res: WorkerResponse; transfer: ArrayBuffer[] } {
  const transfer: ArrayBuffer[] = [];
  const res: WorkerResponse = { id: req.id, ok: true, data: out, ...(persistError ? { persistError } : {}) };
  if (out.byteLength > 0 && out.byteOffset === 0 && out.byteLength === out.buffer.byteLength) transfer.push(out.buffer as ArrayBuffer);
  // a recycled buffer of stored bytes goes back (unless the bytes are the answer: a raw chunk)
  if (req.giveBack === true && out.buffer !== req.stored.buffer) {
    res.storedBack = req.stored;
    transfer.push(req.stored.buffer as ArrayBuffer);
  }
  return { res, transfer };
}

parentPort?.on('message', (req: WorkerRequest) => {
  const post = (r: { res: WorkerResponse; transfer: ArrayBuffer[] }): void => parentPort?.postMessage(r.res, r.transfer);
  try {
    if (req.op === 'ping') return post({ res: { id: req.id, ok: true, pong: true }, transfer: [] });
    if (req.op === 'encode') {
      const data = Buffer.from(req.data.buffer, req.data.byteOffset, req.data.byteLength);
      const enc = codec.encode(data, req.level);
      return post({ res: { id: req.id, ok: true, digest: enc.digest, zero: enc.zero, stored: enc.stored, flags: enc.flags }, transfer: enc.stored.byteLength > 0 ? [enc.stored.buffer as ArrayBuffer] : [] });
    }
    const fileOnly = req.fileOnly === true && req.persist !== undefined;
    if (fileOnly && scratch.byteLength < req.length) scratch = Buffer.allocUnsafeSlow(req.length);
    const out = codec.decode(req.stored, req.flags, req.length, Buffer.from(req.digest), req.what, fileOnly ? scratch : undefined);
    if (!req.persist) return post(decoded(req, out, undefined));
    // the bytes are in the file's page cache when this returns: scratch is free for the next decode
    // visibleFirst: the file is in place (and said to be) before it is durable
    const visible = req.persist.visibleFirst === true ? () => parentPort?.postMessage({ id: req.id, ok: true, visible: true } satisfies WorkerResponse) : undefined;
    const written = persistChunk(out, req.persist.tmpPath, req.persist.finalPath, req.persist.noReplace === true, visible);
    void written.then((persistError) => {
      try {
        // only the file was wanted and it is written: no bytes go back; when it could not be
        // written the caller writes it, and scratch has been reused since: decoded again
        if (persistError === undefined) return post(decoded(req, fileOnly ? Buffer.alloc(0) : out, undefined));
        return post(decoded(req, fileOnly ? codec.decode(req.stored, req.flags, req.length, Buffer.from(req.digest), req.what) : out, persistError));
      } catch (err) {
        return post({ res: failure(req.id, err), transfer: [] });
      }
    });
  } catch (err) {
    post({ res: failure(req.id, err), transfer: [] });
  }
});
