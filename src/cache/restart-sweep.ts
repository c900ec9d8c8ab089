/**
 * Tier 1 after the host restarts. A decode thread may put a chunk file in place before it is
 * durable (DiskTier.visibleFirst; util/atomic-file.ts, writeAtomicOverlapped's `onVisible`), and
 * writes its row only once it is: after a crash of the host such a file may be torn under its
 * name, with no row. So the first process to open the cache in a new boot of the host (its boot
 * id, proc(5), recorded in the index) removes every chunk file without a row before anything
 * reads tier 1 (slipway-blk reads chunk files by name, unverified).
 */
import type Database from 'better-sqlite3';
import { linkSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SlipwayError } from '../errors.js';
import type { Logger } from '../util/log.js';

/** Tier 1's names: `<2 hex>/<64 hex>` (DiskTier.chunkPath). */
const PREFIX = /^[0-9a-f]{2}$/;
const DIGEST = /^[0-9a-f]{64}$/;
/** Busy timeouts (10 s each, DiskTier's) waited out for another process's sweep before giving up. */
const SWEEP_BUSY_ATTEMPTS = 6;

/** The file system (or SQLite's WAL on it) has no room left. */
export function isDiskFull(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code;
  return code === 'ENOSPC' || code === 'SQLITE_FULL';
}

/** The host's boot id (`/proc/sys/kernel/random/boot_id`, proc(5)), or undefined where it cannot be read. */
export function hostBootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * On the first open of the cache in boot `bootId` of the host: remove the chunk files under
 * `chunkDir` (`<2 hex>/<64 hex>`) that have no row in `db`'s `chunks` table, whatever their age,
 * and record the boot in its `boot` table. One process sweeps, under SQLite's write lock (an
 * IMMEDIATE transaction: a crash in the middle sweeps again next time); the others find the boot
 * recorded. Every later open costs one SELECT. Returns false when the boot could not be recorded
 * (a full disk: logged), and then files must be durable before they are in place; throws
 * IO_ERROR when the index cannot be read or written otherwise.
 */
export function sweepAfterRestart(db: Database.Database, chunkDir: string, bootId: string, logger: Logger): boolean {
  const recorded = (): string | undefined => (db.prepare('SELECT boot_id FROM boot WHERE id = 1').get() as { boot_id: string } | undefined)?.boot_id;
  if (recorded() === bootId) return true;
  let failed = 0;
  const sweep = db.transaction((): number => {
    if (recorded() === bootId) return 0;
    const rows = new Set((db.prepare('SELECT digest FROM chunks').all() as { digest: string }[]).map((r) => r.digest));
    let removed = 0;
    for (const sub of readdirSync(chunkDir, { withFileTypes: true })) {
      if (!sub.isDirectory() || !PREFIX.test(sub.name)) continue;
      for (const f of readdirSync(join(chunkDir, sub.name), { withFileTypes: true })) {
        // chunk files only: anything else there is not slipway's to remove (nor read by slipway-blk)
        if (!f.isFile() || !DIGEST.test(f.name) || rows.has(f.name)) continue;
        try {
          rmSync(join(chunkDir, sub.name, f.name), { force: true });
          removed++;
        } catch (err) {
          failed++;
          logger.warn('could not remove a chunk file the cache has no record of', { path: join(chunkDir, sub.name, f.name), error: (err as Error).message });
        }
      }
    }
    db.prepare('INSERT OR REPLACE INTO boot (id, boot_id) VALUES (1, ?)').run(bootId);
    return removed;
  });
  // another process sweeping a large cache may hold the write lock past the busy timeout: wait on
  for (let attempt = 1; ; attempt++) {
    try {
      const removed = sweep.immediate();
      if (removed > 0 || failed > 0) logger.info('the host restarted: removed chunk files the cache has no record of', { removed, failed });
      return true;
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_BUSY' && attempt < SWEEP_BUSY_ATTEMPTS) continue;
      if (isDiskFull(err)) {
        logger.warn('cache index full: this boot is not recorded; chunk files are made durable before they are read', { error: (err as Error).message });
        return false;
      }
      throw new SlipwayError('IO_ERROR', `cache index in ${chunkDir}/..: sweeping chunk files after the host restarted: ${(err as Error).message}`, { cause: err });
    }
  }
}

/**
 * Whether the file system of `dir` makes hard links (a FAT or some FUSE file systems do not):
 * tried once with a file of its own there, named from `name`, removed after.
 */
export function linksWork(dir: string, name: string): boolean {
  const a = join(dir, `${name}.a`);
  const b = join(dir, `${name}.b`);
  try {
    writeFileSync(a, '');
    linkSync(a, b);
    return true;
  } catch {
    return false;
  } finally {
    rmSync(a, { force: true });
    rmSync(b, { force: true });
  }
}
