import { parentPort } from 'node:worker_threads';
import { ChunkCodec } from '../disk/chunk-codec.js';
import { writeAtomicSync } from '../util/atomic-file.js';
import type { WorkerRequest, WorkerResponse } from './pool.js';
import { CHUNK_FILE_BACKDATE_MS } from '../util/atomic-file.js';

const codec = new ChunkCodec();
/** where chunks only written to their file are decoded: reused, so no fresh memory per chunk */
let scratch = Buffer.alloc(0);

/**
 * Write a verified chunk to its cache file (util/atomic-file.ts, as the disk tier writes one) on
 * this thread, so the daemon's event loop does no file I/O for it. Returns the errno code on
 * failure (ENOSPC is the caller's to handle), or undefined.
 */
function persistChunk(data: Uint8Array, tmpPath: string, finalPath: string): string | undefined {
  try {
    writeAtomicSync(finalPath, data, { tmpPath, dataOnly: true, syncDir: false, timesMs: Date.now() - CHUNK_FILE_BACKDATE_MS });
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'EIO';
  }
}

parentPort?.on('message', (req: WorkerRequest) => {
  let res: WorkerResponse;
  const transfer: ArrayBuffer[] = [];
  try {
    if (req.op === 'ping') {
      res = { id: req.id, ok: true, pong: true };
    } else if (req.op === 'encode') {
      const data = Buffer.from(req.data.buffer, req.data.byteOffset, req.data.byteLength);
      const enc = codec.encode(data, req.level);
      res = { id: req.id, ok: true, digest: enc.digest, zero: enc.zero, stored: enc.stored, flags: enc.flags };
      if (enc.stored.byteLength > 0) transfer.push(enc.stored.buffer as ArrayBuffer);
    } else {
      const fileOnly = req.fileOnly === true && req.persist !== undefined;
      if (fileOnly && scratch.byteLength < req.length) scratch = Buffer.allocUnsafeSlow(req.length);
      let out = codec.decode(req.stored, req.flags, req.length, Buffer.from(req.digest), req.what, fileOnly ? scratch : undefined);
      const persistError = req.persist ? persistChunk(out, req.persist.tmpPath, req.persist.finalPath) : undefined;
      // only the file was wanted and it is written: no bytes go back
      if (fileOnly && persistError === undefined) out = Buffer.alloc(0);
      else if (out.buffer === scratch.buffer) out = Buffer.from(out);
      res = { id: req.id, ok: true, data: out, ...(persistError ? { persistError } : {}) };
      if (out.byteLength > 0 && out.byteOffset === 0 && out.byteLength === out.buffer.byteLength) transfer.push(out.buffer as ArrayBuffer);
      // a recycled buffer of stored bytes goes back (unless the bytes are the answer: a raw chunk)
      if (req.giveBack === true && out.buffer !== req.stored.buffer) {
        res.storedBack = req.stored;
        transfer.push(req.stored.buffer as ArrayBuffer);
      }
    }
  } catch (err) {
    const e = err as { code?: string; message?: string };
    res = { id: req.id, ok: false, code: e.code ?? 'IO_ERROR', message: e.message ?? String(err) };
  }
  parentPort?.postMessage(res, transfer);
});
