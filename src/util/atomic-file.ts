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
import { close, closeSync, fdatasync, fdatasyncSync, fsyncSync, futimesSync, linkSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { link, lstat, mkdir, open, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
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
  /**
   * Never replace a file already under the name (`placeWithoutReplacing`): a content-addressed
   * store's (the chunk cache's), where a file under its name is the same bytes. Not with `syncDir`.
   */
  noReplace?: boolean;
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

const fdatasyncAsync = promisify(fdatasync);
const closeAsync = promisify(close);

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/**
 * fsync (`dataOnly`: fdatasync) a file or directory by name: a directory after a rename in it, or a
 * chunk file another writer put in place, that a record of ours will vouch for.
 */
async function syncByName(path: string, dataOnly: boolean): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await (dataOnly ? handle.datasync() : handle.sync());
  } finally {
    await handle.close();
  }
}

/** `place()`, tried again once the target's directory is made, when it was missing. */
async function intoDirectory<T>(finalPath: string, place: () => Promise<T>): Promise<T> {
  try {
    return await place();
  } catch (err) {
    if (!isMissing(err)) throw err;
    await mkdir(dirname(finalPath), { recursive: true });
    return place();
  }
}

/** Rename into place; a target directory that does not exist yet is made (once) and the rename tried again. */
function renameIntoPlace(tmp: string, finalPath: string): Promise<void> {
  return intoDirectory(finalPath, () => rename(tmp, finalPath));
}

/**
 * Put `tmp` (of `bytes` bytes, written) in place under `finalPath` unless a regular file of that
 * length is there already, which then stays: a hard link, which unlike a rename never replaces
 * what is there, so a file another writer has made durable (and recorded as such) is never
 * swapped for one that is not yet (see writeAtomicOverlapped's `onVisible`). Anything else there
 * (a torn file of another length) is replaced by a rename, once `beforeReplace` has made `tmp`
 * durable. The target directory is made if missing. Returns how `tmp` went: 'linked' or 'kept'
 * (the file there stays): its temporary name is the caller's to remove (once readers have been
 * told: a thread-pool round trip); 'replaced': renamed, durable. A file system without hard links
 * throws (EPERM, ENOTSUP): DiskTier checks for them when it opens.
 */
async function placeWithoutReplacing(tmp: string, finalPath: string, bytes: number, beforeReplace: () => Promise<void>): Promise<'linked' | 'kept' | 'replaced'> {
  const linkOnce = async (): Promise<'linked' | 'kept' | 'replaced'> => {
    try {
      await link(tmp, finalPath);
      return 'linked';
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const there = await lstat(finalPath);
      if (there.isFile() && there.size === bytes) return 'kept';
      await beforeReplace();
      await rename(tmp, finalPath);
      return 'replaced';
    }
  };
  return intoDirectory(finalPath, linkOnce);
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
    if (opts.noReplace) {
      // what is there already was written by another writer: durable before our caller says so
      const how = await placeWithoutReplacing(tmp, finalPath, (await stat(tmp)).size, async () => undefined);
      if (how !== 'replaced') await unlink(tmp).catch(() => undefined);
      if (how === 'kept' && opts.durable !== false) await syncByName(finalPath, true);
    } else await renameIntoPlace(tmp, finalPath);
    renamed = true;
    if (opts.syncDir !== false && opts.durable !== false) await syncByName(dirname(finalPath), false);
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
 * after the host restarts may ask for it (the chunk cache: src/cache/disk-tier.ts), and it also
 * asks for `noReplace`, so that a file under a record is never swapped for one not yet durable.
 * If the fdatasync fails the file is removed (its pages may be lost) and the promise rejects.
 * `noReplace`: see AtomicWriteOptions; a file of the same length already there is kept (and made
 * durable before this resolves) and ours removed.
 */
export async function writeAtomicOverlapped(finalPath: string, data: Uint8Array, opts: { tmpPath: string; timesMs?: number; onVisible?: () => void; noReplace?: boolean }): Promise<void> {
  const tmp = opts.tmpPath;
  const fd = openSync(tmp, 'wx', 0o644);
  try {
    for (let off = 0; off < data.byteLength; ) off += writeSync(fd, data, off, data.byteLength - off);
    if (opts.timesMs !== undefined) futimesSync(fd, opts.timesMs / 1000, opts.timesMs / 1000);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  /** fdatasync `fd` once (our bytes durable), however many ask */
  let synced: Promise<void> | undefined;
  const syncOurs = (): Promise<void> => (synced ??= fdatasyncAsync(fd));
  /** in place under its name (see placeWithoutReplacing; without noReplace, renamed once durable) */
  const place = (): Promise<'linked' | 'kept' | 'replaced'> => (opts.noReplace ? placeWithoutReplacing(tmp, finalPath, data.byteLength, syncOurs) : syncOurs().then(() => renameIntoPlace(tmp, finalPath)).then(() => 'replaced' as const));
  /** the temporary name, when it still is one (linked, or the file there kept) */
  const dropTmp = (how: 'linked' | 'kept' | 'replaced'): Promise<void> => (how === 'replaced' ? Promise.resolve() : unlink(tmp).catch(() => undefined));
  const onVisible = opts.onVisible;
  if (!onVisible) {
    try {
      try {
        await syncOurs();
        const how = await place();
        await dropTmp(how);
        if (how === 'kept') await syncByName(finalPath, true);
      } finally {
        await closeAsync(fd);
      }
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return;
  }
  let how: 'linked' | 'kept' | 'replaced';
  try {
    // the link itself is tried at once, on this thread: a metadata operation of microseconds that,
    // queued on the thread pool, would wait behind the fdatasyncs of earlier files there (the
    // reader waits for it); anything but a plain success (a file there, no directory yet) goes
    // the careful way
    how = opts.noReplace && linkNow(tmp, finalPath) ? 'linked' : await place();
  } catch (err) {
    await closeAsync(fd).catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
  try {
    onVisible();
  } catch {
    // the caller's own failure; the file is made durable regardless
  }
  const dropped = dropTmp(how);
  try {
    if (how === 'linked') await syncOurs();
    else if (how === 'kept') await syncByName(finalPath, true);
  } catch (err) {
    // ours, under its name, whose fdatasync failed: its pages may be lost; gone, it is fetched
    // again (a file kept from another writer is that writer's to answer for)
    if (how === 'linked') await rm(finalPath, { force: true });
    throw err;
  } finally {
    await closeAsync(fd).catch(() => undefined);
    await dropped;
  }
}

/** Hard-link `tmp` to `finalPath` synchronously: false (nothing done) when that fails in any way. */
function linkNow(tmp: string, finalPath: string): boolean {
  try {
    linkSync(tmp, finalPath);
    return true;
  } catch {
    return false;
  }
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
