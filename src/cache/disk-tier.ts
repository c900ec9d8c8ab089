/**
 * Tier 1: a content-addressed store of decompressed chunks on local disk, indexed in SQLite (WAL).
 *
 * Files: `<cacheDir>/chunks/<first two hex>/<sha256 hex>`, the chunk's bytes uncompressed, so
 * that a backend can read them straight into guest memory. Rows: digest, size, last access. A row
 * is written only after its file is in place and durable, so a row without a file means the file
 * was lost, and a read then reports a miss (the row is dropped) and the chunk is fetched again.
 * A file may be in place before it is durable (`visibleFirst`): after the host restarts, files
 * without a row are removed before anything reads them.
 * A file's bytes are checked against its name before they are served.
 *
 * Several processes share one cache directory: SQLite serialises the index (busy timeout), file
 * writes are atomic and idempotent (same name, same bytes), and an eviction racing a reader only
 * ever produces a miss. Pins name a holder (a process and a disk); pins of holders whose process
 * has died are ignored and cleared. Which process fetches a chunk is not tier 1's business:
 * fetch-claims.ts decides that, for the chunk fetcher.
 */
import Database from 'better-sqlite3';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readSync, rmSync, unlinkSync, openSync, closeSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SlipwayError } from '../errors.js';
import { CHUNK_FILE_BACKDATE_MS, writeAtomic } from '../util/atomic-file.js';
import type { Logger } from '../util/log.js';
import { processAlive } from '../util/process.js';
import { hostBootId, isDiskFull, linksWork, sweepAfterRestart } from './restart-sweep.js';

export interface DiskTierOptions {
  cacheDir: string;
  budgetBytes: number;
  lowWatermark: number;
  logger: Logger;
  /** this boot of the host (default: /proc/sys/kernel/random/boot_id; tests give their own, null: unknown) */
  bootId?: string | null;
}

export interface DiskTierStats {
  chunks: number;
  bytes: number;
  budgetBytes: number;
  pinnedChunks: number;
  holders: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS chunks (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, last_access INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_lru ON chunks(last_access);
CREATE TABLE IF NOT EXISTS holders (holder TEXT PRIMARY KEY, pid INTEGER NOT NULL, label TEXT NOT NULL, since INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (holder TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (holder, digest)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pins_digest ON pins(digest);
CREATE TABLE IF NOT EXISTS tags (ref TEXT PRIMARY KEY, digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, seen INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS boot (id INTEGER PRIMARY KEY CHECK (id = 1), boot_id TEXT NOT NULL);
INSERT OR IGNORE INTO totals (id, bytes, chunks) VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS chunks_ins AFTER INSERT ON chunks BEGIN UPDATE totals SET bytes = bytes + NEW.size, chunks = chunks + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS chunks_del AFTER DELETE ON chunks BEGIN UPDATE totals SET bytes = bytes - OLD.size, chunks = chunks - 1 WHERE id = 1; END;
`;

/** `pin` writes this many rows at once, the rest a batch a turn of the event loop */
export const PIN_BATCH = 512;

/** How long after tier 1 last found its disk full files are durable before they are read (`recentlyFull`). */
const FULL_RECENTLY_MS = 60_000;

/** adopt checks the budget each time this fraction of it has been adopted (docs/cache.md) */
const BUDGET_CHECK_FRACTION = 64;

export class DiskTier {
  readonly chunkDir: string;
  /**
   * Whether a chunk file may be put in place before it is durable (a decode thread's, see
   * util/atomic-file.ts, writeAtomicOverlapped's `onVisible`): its row is written only once it
   * is, and the first process to open the cache after the host restarts removes every chunk
   * file without a row (`sweepAfterRestart`), so that a file a crash left torn under its name is
   * never read. False where the host's boot id cannot be read, this boot could not be recorded (a
   * full disk) or the file system makes no hard links (`linksWork`).
   */
  readonly visibleFirst: boolean;
  /**
   * Whether this file system makes hard links (checked at open): chunk files are then put in place
   * without ever replacing one already there (util/atomic-file.ts, `noReplace`), which
   * `visibleFirst` needs; else renamed, durable first.
   */
  readonly linksWork: boolean;
  /** when tier 1 last found its disk or its index full (ms since the epoch; 0: never) */
  private fullAt = 0;
  private readonly tmpDir: string;
  private readonly db: Database.Database;
  private readonly pendingAccess = new Map<string, number>();
  private flushTimer: NodeJS.Timeout | undefined;
  private readonly stmts;
  private readonly holders = new Set<string>();
  /** chunk files whose bytes this process has checked: later partial reads trust them */
  private readonly verified = new Set<string>();
  /** tempPath's names: this instance's id, and a counter */
  private readonly instance = randomBytes(4).toString('hex');
  private tempSeq = 0;
  /** bytes adopted since the budget was last checked (the first adopt of a process checks it) */
  private adoptedSinceCheck = Number.POSITIVE_INFINITY;
  /** pins whose rows are still being written, a batch a turn: the digests left, by holder */
  private readonly pinJobs = new Map<string, string[]>();
  /** adoptSoon's chunks waiting for this turn's transaction */
  private adoptQueue: { digest: string; size: number; done: (ok: boolean) => void; fail: (err: unknown) => void }[] = [];

  constructor(private readonly opts: DiskTierOptions) {
    this.chunkDir = join(opts.cacheDir, 'chunks');
    this.tmpDir = join(opts.cacheDir, 'tmp');
    mkdirSync(this.chunkDir, { recursive: true });
    mkdirSync(this.tmpDir, { recursive: true });
    try {
      this.db = new Database(join(opts.cacheDir, 'index.db'), { timeout: 10_000 });
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.exec(SCHEMA);
    } catch (err) {
      throw new SlipwayError('IO_ERROR', `cache index ${join(opts.cacheDir, 'index.db')}: ${(err as Error).message}`, { cause: err });
    }
    this.stmts = {
      get: this.db.prepare<[string], { size: number }>('SELECT size FROM chunks WHERE digest = ?'),
      upsert: this.db.prepare<[string, number, number]>('INSERT INTO chunks (digest, size, last_access) VALUES (?, ?, ?) ON CONFLICT(digest) DO UPDATE SET last_access = excluded.last_access'),
      del: this.db.prepare<[string]>('DELETE FROM chunks WHERE digest = ?'),
      touch: this.db.prepare<[number, string]>('UPDATE chunks SET last_access = ? WHERE digest = ?'),
      totals: this.db.prepare<[], { bytes: number; chunks: number }>('SELECT bytes, chunks FROM totals WHERE id = 1'),
      lru: this.db.prepare<[number], { digest: string; size: number }>('SELECT digest, size FROM chunks WHERE NOT EXISTS (SELECT 1 FROM pins WHERE pins.digest = chunks.digest) ORDER BY last_access LIMIT ?'),
      holders: this.db.prepare<[], { holder: string; pid: number }>('SELECT holder, pid FROM holders'),
      addHolder: this.db.prepare<[string, number, string, number]>('INSERT OR REPLACE INTO holders (holder, pid, label, since) VALUES (?, ?, ?, ?)'),
      dropHolder: this.db.prepare<[string]>('DELETE FROM holders WHERE holder = ?'),
      dropPinsOf: this.db.prepare<[string]>('DELETE FROM pins WHERE holder = ?'),
      pin: this.db.prepare<[string, string]>('INSERT OR IGNORE INTO pins (holder, digest) VALUES (?, ?)'),
      pinned: this.db.prepare<[], { n: number }>('SELECT COUNT(DISTINCT digest) AS n FROM pins'),
      holderCount: this.db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM holders'),
      getTag: this.db.prepare<[string], { digest: string; media_type: string; size: number; seen: number }>('SELECT digest, media_type, size, seen FROM tags WHERE ref = ?'),
      setTag: this.db.prepare<[string, string, string, number, number]>('INSERT OR REPLACE INTO tags (ref, digest, media_type, size, seen) VALUES (?, ?, ?, ?, ?)'),
    };
    this.clearDeadHolders();
    const bootId = opts.bootId === undefined ? hostBootId() : (opts.bootId ?? undefined);
    this.linksWork = linksWork(this.tmpDir, `linkprobe.${process.pid}.${this.instance}`);
    this.visibleFirst = this.linksWork && bootId !== undefined && sweepAfterRestart(this.db, this.chunkDir, bootId, opts.logger);
  }

  /**
   * Run `fn`, row deletions of files that are gone (every one), with its commit synced (SQLite's
   * synchronous FULL, not the NORMAL of the rest): a deletion a crash rolled back would vouch for
   * whatever file a later fetch put under the name, not yet durable (visibleFirst, in this process
   * or another sharing the cache), and the sweep after the restart would keep it. Deletions are
   * rare: an eviction's batch, a lost or corrupt file.
   */
  private durably<T>(fn: () => T): T {
    // (SQLite cannot change it inside a transaction: none of the callers is in one)
    if (this.db.inTransaction) return fn();
    this.db.pragma('synchronous = FULL');
    try {
      return fn();
    } finally {
      this.db.pragma('synchronous = NORMAL');
    }
  }

  /**
   * Whether tier 1 found its disk or its index full within the last FULL_RECENTLY_MS: files are
   * then made durable before they are read (not `visibleFirst`), so that a reader is never told
   * of a file whose row then cannot be written, and which is removed.
   */
  get recentlyFull(): boolean {
    return Date.now() - this.fullAt < FULL_RECENTLY_MS;
  }

  chunkPath(digestHex: string): string {
    return join(this.chunkDir, digestHex.slice(0, 2), digestHex);
  }

  /** Drop holders (and their pins) whose process is gone. */
  clearDeadHolders(): void {
    const dead = this.stmts.holders.all().filter((h) => !processAlive(h.pid));
    if (dead.length === 0) return;
    this.db.transaction(() => {
      for (const h of dead) {
        this.stmts.dropPinsOf.run(h.holder);
        this.stmts.dropHolder.run(h.holder);
      }
    })();
  }

  has(digestHex: string): boolean {
    return this.stmts.get.get(digestHex) !== undefined;
  }

  /**
   * The chunk's bytes, checked against its digest; undefined on a miss. A missing or corrupted
   * file is a miss too: its row (and file) are dropped so the caller fetches it again.
   */
  get(digestHex: string): { data: Buffer } | { miss: 'absent' | 'lost' | 'corrupt' } {
    const row = this.stmts.get.get(digestHex);
    if (!row) return { miss: 'absent' };
    let data: Buffer;
    try {
      data = readFileSync(this.chunkPath(digestHex));
    } catch {
      this.durably(() => this.stmts.del.run(digestHex));
      this.opts.logger.warn('cache chunk file missing; fetching it again', { digest: digestHex });
      return { miss: 'lost' };
    }
    if (data.byteLength !== row.size || createHash('sha256').update(data).digest('hex') !== digestHex) {
      this.durably(() => this.stmts.del.run(digestHex));
      rmSync(this.chunkPath(digestHex), { force: true });
      this.opts.logger.warn('cache chunk file corrupted; dropped, fetching it again', { digest: digestHex, path: this.chunkPath(digestHex) });
      return { miss: 'corrupt' };
    }
    this.verified.add(digestHex);
    this.noteAccess(digestHex);
    return { data };
  }

  /**
   * `length` bytes at `offset` of a chunk file this process has already verified whole (one
   * pread, no hashing); undefined when it has not, or the file is gone.
   */
  readRange(digestHex: string, offset: number, length: number): Buffer | undefined {
    if (!this.verified.has(digestHex)) return undefined;
    let fd: number;
    try {
      fd = openSync(this.chunkPath(digestHex), 'r');
    } catch {
      this.verified.delete(digestHex);
      this.durably(() => this.stmts.del.run(digestHex));
      return undefined;
    }
    try {
      const out = Buffer.allocUnsafe(length);
      const n = readSync(fd, out, 0, length, offset);
      if (n !== length) {
        this.verified.delete(digestHex);
        return undefined;
      }
      this.noteAccess(digestHex);
      return out;
    } finally {
      closeSync(fd);
    }
  }

  private noteAccess(digestHex: string): void {
    this.pendingAccess.set(digestHex, Date.now());
    if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => {
        try {
          this.flushAccess();
        } catch (err) {
          // access times are a hint for eviction; a full or busy index must not crash the process from a timer
          this.opts.logger.warn('could not record cache access times', { error: (err as Error).message });
        }
      }, 1000);
      this.flushTimer.unref();
    }
  }

  /** Last-access times are batched: one transaction a second, not one write a read. */
  flushAccess(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.pendingAccess.size === 0) return;
    const batch = [...this.pendingAccess];
    this.pendingAccess.clear();
    this.db.transaction(() => {
      for (const [d, t] of batch) this.stmts.touch.run(t, d);
    })();
  }

  /** `flushAccess`, but a full disk or index only loses the times (a hint for eviction), with a warning. */
  private flushAccessUnlessFull(): void {
    try {
      this.flushAccess();
    } catch (err) {
      if (!isDiskFull(err)) throw err;
      this.opts.logger.warn('could not record cache access times: the cache disk is full', { error: (err as Error).message });
    }
  }

  /**
   * Store a verified chunk: temp file, fsync, rename, then the row. On a full disk, evict and try
   * once more; if that fails too the chunk is simply not cached (the read is still served).
   */
  async put(digestHex: string, data: Buffer): Promise<boolean> {
    if (this.has(digestHex)) {
      this.noteAccess(digestHex);
      return true;
    }
    try {
      await this.writeFile(digestHex, data);
    } catch (err) {
      if (!isDiskFull(err)) throw new SlipwayError('IO_ERROR', `writing cache chunk ${digestHex}: ${(err as Error).message}`, { cause: err });
      this.fullAt = Date.now();
      const { bytes } = this.totals();
      this.opts.logger.warn('cache disk full; evicting', { usedBytes: bytes });
      this.makeRoom(bytes);
      try {
        await this.writeFile(digestHex, data);
      } catch (err2) {
        this.opts.logger.warn('cache disk still full; serving without caching', { digest: digestHex, error: (err2 as Error).message });
        return false;
      }
    }
    return this.adopt(digestHex, data.byteLength);
  }

  /**
   * Make the 256 chunk prefix directories now (a long-running daemon does, at start): otherwise
   * each is made by the first chunk that needs it, which a one-shot command prefers (256 mkdirs
   * cost tens of milliseconds on some file systems).
   */
  makePrefixDirs(): void {
    const present = new Set(readdirSync(this.chunkDir));
    for (let i = 0; i < 256; i++) {
      const prefix = i.toString(16).padStart(2, '0');
      // recursive: another process sharing the directory may be making the same ones
      if (!present.has(prefix)) mkdirSync(join(this.chunkDir, prefix), { recursive: true });
    }
  }

  /** A temp path in this cache's tmp directory for a chunk file written elsewhere (a worker thread). */
  tempPath(digestHex: string): string {
    // unique between processes (the pid) and within one (a counter; this tier's instance id for
    // two tiers open on one directory): no random bytes per chunk
    return join(this.tmpDir, `${digestHex}.${process.pid}.${this.instance}.${++this.tempSeq}`);
  }

  /**
   * Index a chunk file already in place at `chunkPath(digestHex)` (written, synced and renamed by
   * `put` or by a worker thread). Returns false, dropping the file, when the index has no room.
   */
  adopt(digestHex: string, size: number): boolean {
    try {
      try {
        this.stmts.upsert.run(digestHex, size, Date.now());
      } catch (err) {
        if (!isDiskFull(err)) throw err;
        // the WAL is what filled the disk: make room, fold the WAL back, try the row once more
        this.makeRoom(this.totals().bytes);
        this.stmts.upsert.run(digestHex, size, Date.now());
      }
    } catch (err) {
      if (!isDiskFull(err)) throw err;
      // no room for the row: drop the file too (a file without a row is a stray) and serve
      // uncached. A reader told it was there before its row was due (visibleFirst) finds it gone
      // and asks again: by then files are durable before they are read (`recentlyFull`)
      this.fullAt = Date.now();
      rmSync(this.chunkPath(digestHex), { force: true });
      this.opts.logger.warn('cache index full; serving without caching', { digest: digestHex, error: (err as Error).message });
      return false;
    }
    this.noteAdopted(size);
    return true;
  }

  /**
   * `adopt`, batched: the files adopted in one turn of the event loop get their rows in one
   * transaction (a transaction of its own costs a chunk about 0.2 ms of the event loop, and a
   * restore adopts hundreds). Resolves as `adopt` returns; a batch that fails (a full disk) is
   * adopted one chunk at a time, as `adopt` handles each.
   */
  adoptSoon(digestHex: string, size: number): Promise<boolean> {
    return new Promise((done, fail) => {
      if (this.adoptQueue.push({ digest: digestHex, size, done, fail }) === 1) setImmediate(() => this.flushAdopts());
    });
  }

  private flushAdopts(): void {
    const batch = this.adoptQueue;
    this.adoptQueue = [];
    if (batch.length === 0) return;
    const now = Date.now();
    try {
      this.db.transaction(() => {
        for (const a of batch) this.stmts.upsert.run(a.digest, a.size, now);
      })();
    } catch {
      for (const a of batch) {
        try {
          a.done(this.adopt(a.digest, a.size));
        } catch (err) {
          a.fail(err);
        }
      }
      return;
    }
    for (const a of batch) a.done(true);
    try {
      this.noteAdopted(batch.reduce((n, a) => n + a.size, 0));
    } catch (err) {
      // (from a timer: an eviction that fails must not take the process down; the next one retries)
      this.opts.logger.warn('could not evict tier 1 down to its budget', { error: (err as Error).message });
    }
  }

  /**
   * The budget is checked every BUDGET_CHECK_FRACTION of it adopted here (at most every 4 MiB),
   * not on every chunk: tier 1 may pass its budget by that much (and what other processes sharing
   * the directory added since) before this process evicts.
   */
  private noteAdopted(size: number): void {
    this.adoptedSinceCheck += size;
    if (this.adoptedSinceCheck >= Math.min(4 << 20, this.opts.budgetBytes / BUDGET_CHECK_FRACTION)) {
      this.adoptedSinceCheck = 0;
      if (this.totals().bytes > this.opts.budgetBytes) this.evictTo(Math.floor(this.opts.budgetBytes * this.opts.lowWatermark));
    }
  }

  /**
   * On a full file system: evict to the low watermark of what is used, then checkpoint the WAL
   * with TRUNCATE (on a small disk an unchecked WAL is what eats the room eviction gave back).
   */
  private makeRoom(usedBytes: number): void {
    try {
      this.evictTo(Math.floor(usedBytes * this.opts.lowWatermark));
    } catch (err) {
      if (!isDiskFull(err)) throw err;
    }
    try {
      this.db.pragma('wal_checkpoint(TRUNCATE)');
    } catch (err) {
      if (!isDiskFull(err)) throw err;
    }
  }

  /**
   * Write, fdatasync and rename (util/atomic-file.ts) in libuv's thread pool: the sync is the slow
   * part, and several chunks arriving at once are written in parallel while the event loop goes on
   * serving. The temporary file is in the cache's tmp directory (fsck clears a dead process's); a
   * prefix directory is made by the first chunk that needs it. The directory is not fsynced: a
   * rename lost in a crash leaves a row without its file, which is a miss, fetched again.
   */
  private writeFile(digestHex: string, data: Buffer): Promise<void> {
    return writeAtomic(this.chunkPath(digestHex), (handle) => handle.writeFile(data), { tmpPath: this.tempPath(digestHex), dataOnly: true, syncDir: false, noReplace: this.linksWork, timesMs: Date.now() - CHUNK_FILE_BACKDATE_MS });
  }

  totals(): { bytes: number; chunks: number } {
    return this.stmts.totals.get() ?? { bytes: 0, chunks: 0 };
  }

  /** Evict least-recently-used, unpinned chunks until at most `targetBytes` remain. */
  evictTo(targetBytes: number): { evictedChunks: number; evictedBytes: number } {
    this.flushAccessUnlessFull();
    this.clearDeadHolders();
    let evictedChunks = 0;
    let evictedBytes = 0;
    for (;;) {
      const { bytes } = this.totals();
      if (bytes <= targetBytes) break;
      const victims = this.stmts.lru.all(256);
      if (victims.length === 0) break;
      let need = bytes - targetBytes;
      const chosen: { digest: string; size: number }[] = [];
      for (const v of victims) {
        if (need <= 0) break;
        chosen.push(v);
        need -= v.size;
      }
      // Files first, then rows: on a full file system the row deletions need room in the WAL,
      // which the unlinked files give back (a row without its file is only ever a miss).
      for (const v of chosen) {
        this.verified.delete(v.digest);
        try {
          unlinkSync(this.chunkPath(v.digest));
        } catch {
          // already gone: another process evicted it too
        }
      }
      this.durably(() =>
        this.db.transaction(() => {
          for (const v of chosen) this.stmts.del.run(v.digest);
        })(),
      );
      for (const v of chosen) {
        evictedChunks++;
        evictedBytes += v.size;
      }
    }
    if (evictedChunks > 0) this.opts.logger.info('cache evicted chunks', { evictedChunks, evictedBytes });
    return { evictedChunks, evictedBytes };
  }

  /**
   * Pin a disk's chunks for as long as process `pid` lives (this one by default) or until `unpin`:
   * eviction skips them. Pins held for another process (a disk backend that outlives the daemon)
   * are not dropped when this cache closes. Returns the holder id to unpin with.
   */
  pin(label: string, digestsHex: Iterable<string>, pid = process.pid): string {
    const holder = `${pid}-${randomBytes(6).toString('hex')}`;
    const all = [...digestsHex];
    // the first PIN_BATCH rows now, the rest a batch a turn (a RAM image has thousands of chunks,
    // and a restore waits on the event loop): until they are in, eviction may take one of those
    // chunks, which costs its reader a fetch, as any eviction racing a reader does
    this.db.transaction(() => {
      this.stmts.addHolder.run(holder, pid, label, Date.now());
      for (const d of all.slice(0, PIN_BATCH)) this.stmts.pin.run(holder, d);
    })();
    if (pid === process.pid) this.holders.add(holder);
    if (all.length > PIN_BATCH) {
      this.pinJobs.set(holder, all.slice(PIN_BATCH));
      setImmediate(() => this.pinMore(holder));
    }
    return holder;
  }

  /** The next batch of a pin's rows (see `pin`). */
  private pinMore(holder: string): void {
    const rest = this.pinJobs.get(holder);
    if (!rest) return; // unpinned, or the tier closed
    const batch = rest.splice(0, PIN_BATCH);
    try {
      this.db.transaction(() => {
        for (const d of batch) this.stmts.pin.run(holder, d);
      })();
    } catch (err) {
      // (from a timer) a busy or full index: those chunks stay unpinned, which costs at most a fetch
      this.pinJobs.delete(holder);
      this.opts.logger.warn("could not pin all of a disk's chunks", { holder, error: (err as Error).message });
      return;
    }
    if (rest.length > 0) setImmediate(() => this.pinMore(holder));
    else this.pinJobs.delete(holder);
  }

  unpin(holder: string): void {
    this.pinJobs.delete(holder);
    this.db.transaction(() => {
      this.stmts.dropPinsOf.run(holder);
      this.stmts.dropHolder.run(holder);
    })();
    this.holders.delete(holder);
  }

  lastSeenTag(ref: string): { digest: string; mediaType: string; size: number; seen: number } | undefined {
    const row = this.stmts.getTag.get(ref);
    return row ? { digest: row.digest, mediaType: row.media_type, size: row.size, seen: row.seen } : undefined;
  }

  recordTag(ref: string, desc: { digest: string; mediaType: string; size: number }): void {
    this.stmts.setTag.run(ref, desc.digest, desc.mediaType, desc.size, Date.now());
  }

  stats(): DiskTierStats {
    const t = this.totals();
    return { chunks: t.chunks, bytes: t.bytes, budgetBytes: this.opts.budgetBytes, pinnedChunks: this.stmts.pinned.get()?.n ?? 0, holders: this.stmts.holderCount.get()?.n ?? 0 };
  }

  /**
   * Reconcile files and rows after a crash: temp files are removed, files without a row are
   * removed (they were never committed), rows without a file are dropped.
   */
  fsck(): { strayFiles: number; lostRows: number } {
    let strayFiles = 0;
    let lostRows = 0;
    // Another process may be writing right now: only temp files of dead processes, and chunk
    // files without a row that are older than a minute (a writer adds the row right after its
    // rename, or after the fdatasync that follows it: visibleFirst), are strays.
    for (const f of readdirSync(this.tmpDir)) {
      const pid = Number(f.split('.')[1]);
      if (!Number.isInteger(pid) || !processAlive(pid)) rmSync(join(this.tmpDir, f), { force: true });
    }
    const settledBefore = Date.now() - 60_000;
    const rows = new Set((this.db.prepare('SELECT digest FROM chunks').all() as { digest: string }[]).map((r) => r.digest));
    const seen = new Set<string>();
    for (const sub of readdirSync(this.chunkDir)) {
      for (const f of readdirSync(join(this.chunkDir, sub))) {
        if (rows.has(f)) seen.add(f);
        else if (statSync(join(this.chunkDir, sub, f)).mtimeMs < settledBefore) {
          rmSync(join(this.chunkDir, sub, f), { force: true });
          strayFiles++;
        }
      }
    }
    this.durably(() =>
      this.db.transaction(() => {
        for (const d of rows) {
          if (!seen.has(d)) {
            this.stmts.del.run(d);
            lostRows++;
          }
        }
      })(),
    );
    return { strayFiles, lostRows };
  }

  close(): void {
    // pins held for other processes outlive this one: their rows still to come are written now
    for (const [holder, rest] of this.pinJobs) {
      if (this.holders.has(holder)) continue;
      try {
        this.db.transaction(() => {
          for (const d of rest) this.stmts.pin.run(holder, d);
        })();
      } catch (err) {
        if (!isDiskFull(err)) throw err;
        // its backend reads on; a chunk evicted under it is fetched again through a daemon
        this.opts.logger.error('could not record the pins of a running backend: the cache disk is full', { holder, chunks: rest.length, error: (err as Error).message });
      }
    }
    this.pinJobs.clear();
    this.flushAdopts();
    this.flushAccessUnlessFull();
    for (const h of [...this.holders]) this.unpin(h);
    this.db.close();
  }
}
