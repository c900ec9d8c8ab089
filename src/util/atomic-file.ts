/**
 * The one crash-safe write: the bytes go to a temporary file (beside the target unless told
 * otherwise, always on its file system), are fsynced, and are renamed into place; the directory
 * is then fsynced so that the rename survives a crash. A reader sees the old content or the new,
 * never a part. The temporary file is removed on any failure. `writeAtomic` takes a function that
 * fills the file; `writeAtomicSync` is the same for a worker thread's synchronous code, and
 * `writeAtomicOverlapped` the same with its wait for the disk off that thread (or, for the chunk
 * cache, with the file in place before it is durable: see its `onVisible`).
 */
import { createHash, randomBytes } from 'node:crypto';
import { close, closeSync, fdatasync, fdatasyncSync, fsyncSync, futimesSync, mkdirSync, openSync, rename as renameCb, renameSync, rmSync, writeSync } from 'node:fs';
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { SlipwayError } from '../errors.js';

export interface AtomicWriteOptions {
  /** the temporary file (default: a fresh name beside the target); it must be on the target's file system */
  tmpPath?: string;
  /** fdatasync (the content) instead of fsync (content and metadata) */
  dataOnly?: boolean;
  /**
   * fsync the directory after the rename (default true). Only a store for which a lost rename is
   * harmless (the chunk cache: a missing file is a miss, fetched again) may leave it out.
   */
  syncDir?: boolean;
  /**
   * Make the write durable (default true): fsync the file, and the directory after the rename.
   * Without, the write is still atomic (a reader sees the old file or the whole new one) but a
   * crash may leave an empty or torn file: only a cache whose every read is verified, and fetched
   * again when bad, may do without (the metadata cache: src/cache/disk-manifest.ts).
   */
  durable?: boolean;
  /** what to throw when the temporary file cannot be created (default: the system error) */
  openFailed?: (err: unknown) => unknown;
  /**
   * Set the file's access and modification times to this (ms since the epoch) before it appears
   * under its name: a time in the past makes any later read move the access time past the
   * modification time (relatime), however soon after the write it comes (the chunk cache tells a
   * speculated chunk the guest read from one it did not that way).
   */
  timesMs?: number;
}

/** How far in the past chunk-cache files are dated (see AtomicWriteOptions.timesMs); well under the stray-file age (60 s). */
export const CHUNK_FILE_BACKDATE_MS = 2_000;

function tempPathFor(finalPath: string): string {
  return join(dirname(finalPath), `.tmp-${basename(finalPath)}-${process.pid}-${randomBytes(6).toString('hex')}`);
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Rename into place; a target directory that does not exist yet is made (once) and the rename tried again. */
async function renameIntoPlace(tmp: string, finalPath: string): Promise<void> {
  try {
    await rename(tmp, finalPath);
  } catch (err) {
    if (!isMissing(err)) throw err;
    await mkdir(dirname(finalPath), { recursive: true });
    await rename(tmp, finalPath);
  }
}

/** Write `finalPath` crash-safely with what `fill` writes to the temporary file's handle. */
export async function writeAtomic(finalPath: string, fill: (handle: FileHandle) => Promise<void>, opts: AtomicWriteOptions = {}): Promise<void> {
  const tmp = opts.tmpPath ?? tempPathFor(finalPath);
  let renamed = false;
  try {
    let handle: FileHandle;
    try {
      handle = await open(tmp, 'wx', 0o644);
    } catch (err) {
      throw opts.openFailed ? opts.openFailed(err) : err;
    }
    try {
      await fill(handle);
      if (opts.timesMs !== undefined) await handle.utimes(opts.timesMs / 1000, opts.timesMs / 1000);
      if (opts.durable !== false) await (opts.dataOnly ? handle.datasync() : handle.sync());
    } finally {
      await handle.close();
    }
    await renameIntoPlace(tmp, finalPath);
    renamed = true;
    if (opts.syncDir !== false && opts.durable !== false) await fsyncDir(dirname(finalPath));
  } finally {
    if (!renamed) await rm(tmp, { force: true });
  }
}

/** `writeAtomic` of a whole buffer on the calling thread (a worker's: it keeps file I/O off the event loop). */
export function writeAtomicSync(finalPath: string, data: Uint8Array, opts: Omit<AtomicWriteOptions, 'openFailed'> = {}): void {
  const tmp = opts.tmpPath ?? tempPathFor(finalPath);
  let renamed = false;
  try {
    const fd = openSync(tmp, 'wx', 0o644);
    try {
      for (let off = 0; off < data.byteLength; ) off += writeSync(fd, data, off, data.byteLength - off);
      if (opts.timesMs !== undefined) futimesSync(fd, opts.timesMs / 1000, opts.timesMs / 1000);
      (opts.dataOnly ? fdatasyncSync : fsyncSync)(fd);
    } finally {
      closeSync(fd);
    }
    try {
      renameSync(tmp, finalPath);
    } catch (err) {
      if (!isMissing(err)) throw err;
      mkdirSync(dirname(finalPath), { recursive: true });
      renameSync(tmp, finalPath);
    }
    renamed = true;
    if (opts.syncDir !== false) {
      const dirFd = openSync(dirname(finalPath), 'r');
      try {
        fsyncSync(dirFd);
      } finally {
        closeSync(dirFd);
      }
    }
  } finally {
    if (!renamed) rmSync(tmp, { force: true });
  }
}

/**
 * `writeAtomicSync` (data only, no directory fsync: the chunk cache's write) with only the write
 * on the calling thread: the fdatasync, close and rename go through libuv's thread pool, so the
 * thread goes on (a decode thread decodes its next chunk) while the disk catches up, and fsyncs
 * of several files wait on the journal's commits together. Resolves once the file is in place
 * (durable before its rename); rejects with the system error, the temporary file removed.
 *
 * `onVisible`: rename first, call `onVisible` once the file is in place under its name (complete
 * for every reader on this host, not yet durable), then fdatasync; resolves once it is durable.
 * A crash of the host in between may leave the file torn under its name: only a store that keeps
 * a record of durable files, written after this resolves, and removes every file without one
 * after the host restarts may ask for it (the chunk cache: src/cache/disk-tier.ts). If the
 * fdatasync fails the promise rejects and the file stays, complete on this host but without that
 * record (readers may have opened it already).
 */
export function writeAtomicOverlapped(finalPath: string, data: Uint8Array, opts: { tmpPath: string; timesMs?: number; onVisible?: () => void }): Promise<void> {
  const tmp = opts.tmpPath;
  let fd: number;
  try {
    fd = openSync(tmp, 'wx', 0o644);
  } catch (err) {
    return Promise.reject(err);
  }
  try {
    for (let off = 0; off < data.byteLength; ) off += writeSync(fd, data, off, data.byteLength - off);
    if (opts.timesMs !== undefined) futimesSync(fd, opts.timesMs / 1000, opts.timesMs / 1000);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    return Promise.reject(err);
  }
  /** rename the written file into place (making its directory once, if it is missing) */
  const place = (done: (err: unknown) => void): void => {
    renameCb(tmp, finalPath, (err) => {
      if (!err || !isMissing(err)) return done(err);
      mkdir(dirname(finalPath), { recursive: true }).then(() => rename(tmp, finalPath)).then(() => done(null), done);
    });
  };
  const onVisible = opts.onVisible;
  if (onVisible) {
    return new Promise<void>((resolve, reject) => {
      place((err) => {
        if (err) {
          close(fd, () => rm(tmp, { force: true }).finally(() => reject(err)));
          return;
        }
        onVisible();
        fdatasync(fd, (syncErr) => {
          close(fd, (closeErr) => {
            const failed = syncErr ?? closeErr;
            if (failed) reject(failed);
            else resolve();
          });
        });
      });
    });
  }
  return new Promise<void>((resolve, reject) => {
    const fail = (err: unknown): void => {
      rm(tmp, { force: true }).finally(() => reject(err));
    };
    fdatasync(fd, (syncErr) => {
      close(fd, (closeErr) => {
        if (syncErr || closeErr) return fail(syncErr ?? closeErr);
        place((err) => (err ? fail(err) : resolve()));
      });
    });
  });
}

/** A whole buffer or string written crash-safely; the directory is made when missing. */
export async function writeFileAtomic(finalPath: string, data: Uint8Array | string, opts: Pick<AtomicWriteOptions, 'durable'> = {}): Promise<void> {
  await mkdir(dirname(finalPath), { recursive: true });
  await writeAtomic(finalPath, (handle) => handle.writeFile(data), opts);
}

/**
 * Stream into a file atomically, checking the sha256 and size of what arrived before the rename.
 * On a mismatch nothing is left behind and DIGEST_MISMATCH names `what`.
 */
export async function writeStreamAtomicVerified(
  finalPath: string,
  source: Readable,
  expected: { digest: string; size: number },
  what: string,
): Promise<void> {
  await mkdir(dirname(finalPath), { recursive: true });
  try {
    await writeAtomic(finalPath, async (handle) => {
      const hash = createHash('sha256');
      let size = 0;
      for await (const piece of source) {
        const buf = piece as Buffer;
        hash.update(buf);
        size += buf.byteLength;
        if (size > expected.size) break;
        await handle.write(buf);
      }
      const digest = `sha256:${hash.digest('hex')}`;
      if (size !== expected.size || digest !== expected.digest) {
        throw new SlipwayError('DIGEST_MISMATCH', `${what}: received ${size} bytes with digest ${digest}, expected ${expected.size} bytes with ${expected.digest}`, {
          context: { digest: expected.digest },
        });
      }
    });
  } finally {
    source.destroy();
  }
}
