/**
 * Cross-process single flight: processes sharing a cache directory fetch each chunk once between
 * them. Before fetching, a process claims the chunk with an O_EXCL marker file
 * `<claims dir>/<sha256 hex>` (`claimsDirOf`) naming it as `<pid>:<start time>:<id>` (the start time from
 * /proc, so a reused pid is told apart; the id one per open cache, so one process's caches are);
 * another that finds a live claim waits for the chunk file instead, and takes the fetch over when
 * the claim goes away without a file, or its claimer is gone or does not deliver in time
 * (docs/cache.md, "Tier 1 on disk"). The chunk fetcher (chunk-fetcher.ts) is the only user.
 */
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmdirSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync, type BigIntStats } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { processAlive } from '../util/process.js';
import { processStartTime } from '../util/process-identity.js';

/**
 * Fetch claimers (FetchClaims instances) open in this process. A claim naming this process (same
 * pid and start time) is live only while the claimer that made it is open: a claim left by one
 * that has closed, or by an earlier process that ran under this pid, never blocks us.
 */
const openClaimers = new Set<string>();

/** This process's start time (ticks since boot), or '-' where /proc cannot tell. */
const OWN_START = processStartTime(process.pid) ?? '-';

/** Where claims live when the host has a shared-memory file system (docs/cache.md). */
const SHM = '/dev/shm';

/**
 * The directory of a cache directory's fetch claims: on tmpfs (`/dev/shm/slipway-claims-<id>`,
 * `<id>` from the cache directory's device and inode, so every process that opens the same
 * directory, by any path, finds the same claims) where the host has `/dev/shm`, else
 * `<cacheDir>/inflight`. Claims are host-local and short-lived (one per chunk being fetched, gone
 * when it is stored): on a disk file system their create-and-unlink churn costs an inode
 * allocation each, and ext4 searches past recently freed inodes on every later create, the chunk
 * files' included. A reboot empties tmpfs, which is right for claims of processes it ended.
 */
export function claimsDirOf(cacheDir: string): string {
  let shm = false;
  try {
    shm = statSync(SHM).isDirectory();
  } catch {
    // no /dev/shm: claims go next to the cache
  }
  if (!shm) return join(cacheDir, 'inflight');
  const st = statSync(cacheDir, { bigint: true });
  const id = createHash('sha256').update(`${st.dev}:${st.ino}`).digest('hex').slice(0, 20);
  return join(SHM, `slipway-claims-${id}`);
}

let swept = false;

/**
 * Once per process: the empty claims directories on tmpfs that are this user's alone, another
 * cache's included, removed. A process that ends without closing its caches (killed, say) leaves
 * its directory behind, one per cache directory it opened, and tmpfs keeps them until a reboot. An
 * empty directory holds no claim, and a claimer whose directory goes makes it again (`#makeDir`,
 * checked on every claim), as when the last claimer of a cache removes it on close. A directory
 * with a marker in it stays: its claims are for their claimer, live or not, to settle.
 */
function sweepEmptyClaimDirs(keep: string): void {
  if (swept) return;
  swept = true;
  let names: string[];
  try {
    names = readdirSync(SHM);
  } catch {
    return;
  }
  for (const name of names) {
    const dir = join(SHM, name);
    if (!name.startsWith('slipway-claims-') || dir === keep) continue;
    try {
      const st = lstatSync(dir);
      if (st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o077) === 0) rmdirSync(dir);
    } catch {
      // not empty, gone already, or not ours to remove
    }
  }
}

/** A file's identity for a release: its inode and change time (ns). */
function identity(st: BigIntStats): string {
  return `${st.ino}:${st.ctimeNs}`;
}

/**
 * A marker's text, or undefined when there is none. Opened without following a symlink and
 * without blocking, and read only when it is a regular file: on /dev/shm a marker's name is
 * guessable, and a FIFO or a link put there must not stall or redirect the reader.
 */
function readMarker(marker: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(marker, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > 256) return undefined;
    const buf = Buffer.alloc(Number(st.size));
    const n = readSync(fd, buf, 0, buf.byteLength, 0);
    return buf.subarray(0, n).toString('utf8');
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

export class FetchClaims {
  readonly #cacheDir: string;
  #dir: string;
  /** the inode of the tmpfs claims directory as checked (undefined: claims are next to the cache) */
  #dirIno: number | undefined;
  /**
   * The markers this claimer made and has not released: chunk digest (hex) to the marker's inode
   * and change time (ns), which a marker another claimer put there (a rename) does not share, even
   * where a file system reuses the inode number.
   */
  readonly #mine = new Map<string, string>();
  /**
   * Who this claimer is in fetch claims: `<pid>:<start time>:<id>`, the pid and its start time from
   * /proc (so a reused pid is told apart) and an id per instance (so one process's caches are).
   */
  readonly #claimer = `${process.pid}:${OWN_START}:${randomBytes(4).toString('hex')}`;

  constructor(cacheDir: string) {
    this.#cacheDir = cacheDir;
    this.#dir = claimsDirOf(cacheDir);
    this.#makeDir();
    if (this.#dirIno !== undefined) sweepEmptyClaimDirs(this.#dir);
    openClaimers.add(this.#claimer);
  }

  /**
   * Make the claims directory if it is not there, and check it: on /dev/shm, which every local
   * user may write to, a directory of that name that is not ours alone (another user's, open to
   * others, a symlink) is not trusted with claims, and this claimer's go next to the cache from
   * then on. Checked again whenever the directory has to be made again (something removed it).
   */
  #makeDir(): void {
    const fallback = join(this.#cacheDir, 'inflight');
    if (this.#dir !== fallback) {
      // twice: another claimer of the directory may remove it, empty, between the two steps
      for (let attempt = 0; attempt < 2; attempt++) {
        try {
          try {
            mkdirSync(this.#dir, { mode: 0o700 });
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          }
          const st = lstatSync(this.#dir);
          if (st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o077) === 0) {
            this.#dirIno = st.ino;
            return;
          }
          break;
        } catch (err) {
          // (gone again: once more; no room on tmpfs, or no /dev/shm after all: as below)
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') break;
        }
      }
      this.#dir = fallback;
      this.#dirIno = undefined;
    }
    mkdirSync(fallback, { recursive: true });
  }

  /**
   * Claim the fetch of a chunk with an O_EXCL marker file naming us. False when a live claimer
   * holds it (wait for its file instead, up to the fetch deadline, then `takeOver`); a claim whose
   * claimer is gone (see `#holder`) is taken over at once.
   */
  claim(digestHex: string): boolean {
    // the directory this claimer checked, still (on tmpfs, something may have removed it and
    // another user made one of that name since): else made and checked again
    if (this.#dirIno !== undefined && lstatSync(this.#dir, { throwIfNoEntry: false })?.ino !== this.#dirIno) this.#makeDir();
    const marker = join(this.#dir, digestHex);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(marker, 'wx', 0o600);
        try {
          writeSync(fd, this.#claimer);
          this.#mine.set(digestHex, identity(fstatSync(fd, { bigint: true })));
        } finally {
          closeSync(fd);
        }
        return true;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' && attempt === 0) {
          // the directory was removed (a tmpfs cleaner): made and checked again
          this.#makeDir();
          continue;
        }
        if (code !== 'EEXIST') return true; // cannot coordinate: fetch anyway
        const holder = this.#holder(marker);
        if (holder === this.#claimer) {
          // ours already (claimed again before it was released): released as one
          const st = statSync(marker, { bigint: true, throwIfNoEntry: false });
          if (st) this.#mine.set(digestHex, identity(st));
          return true;
        }
        if (holder !== undefined) return false;
        rmSync(marker, { force: true });
      }
    }
    return true;
  }

  /**
   * The live claimer named in a marker, or undefined: no marker, or a claimer that is gone. A
   * claimer is live when its pid runs with the start time the claim recorded (a reused pid, such
   * as PID 1 in a restarted container, has another) and, when that is this very process, when the
   * claimer is still open. A claim that does not say its start time (an older slipway) is not
   * trusted: the cost of that is at most one fetch done twice. Where /proc cannot tell start
   * times, a running pid is taken at its word.
   */
  #holder(marker: string): string | undefined {
    const text = readMarker(marker);
    if (text === undefined) return undefined;
    if (text === '') {
      // created but not yet written by its claimer (O_EXCL create, then write): held, unless stale
      try {
        return Date.now() - statSync(marker).mtimeMs < 5000 ? 'being-written' : undefined;
      } catch {
        return undefined;
      }
    }
    const [pidText, start, id] = text.split(':');
    const pid = Number(pidText);
    if (!Number.isSafeInteger(pid) || pid <= 0 || start === undefined || id === undefined || !processAlive(pid)) return undefined;
    const actual = processStartTime(pid);
    if (actual !== undefined && actual !== start) return undefined;
    if (pid === process.pid && start === OWN_START && !openClaimers.has(text)) return undefined;
    return text;
  }

  /**
   * Claim the fetch of a chunk whoever holds the claim now: a claimer that has not stored the
   * chunk within the fetch deadline may be alive and not fetching at all. The marker is replaced
   * atomically (rename), so other waiters then wait on us; the old claimer, if it ever finishes,
   * finds the claim is no longer its own and leaves it.
   */
  takeOver(digestHex: string): void {
    const marker = join(this.#dir, digestHex);
    const tmp = `${marker}.${process.pid}.${randomBytes(4).toString('hex')}`;
    try {
      writeFileSync(tmp, this.#claimer, { mode: 0o600 });
      renameSync(tmp, marker);
      // (renaming a file changes its ctime: its identity is taken after)
      const st = statSync(marker, { bigint: true, throwIfNoEntry: false });
      if (st) this.#mine.set(digestHex, identity(st));
    } catch {
      // cannot coordinate (a full disk): fetch anyway, as claim does
      rmSync(tmp, { force: true });
    }
  }

  /** Drop our claim on a chunk, if it is still ours. */
  release(digestHex: string): void {
    const mine = this.#mine.get(digestHex);
    this.#mine.delete(digestHex);
    const marker = join(this.#dir, digestHex);
    // the marker is still the file this claimer made (its inode and change time) unless another
    // took the claim over (a rename puts another file there): no read of it, nor a question to
    // /proc, on every chunk a fetch delivers
    if (mine === undefined) return;
    try {
      const st = statSync(marker, { bigint: true, throwIfNoEntry: false });
      if (st === undefined || identity(st) !== mine) return;
      unlinkSync(marker);
    } catch {
      // cannot remove it (a read-only or failing disk): a claim left behind is taken over after
      // the fetch deadline; a release must never throw into the reader it is part of answering
    }
  }

  /** Whether another live claimer (another process, or another cache in this one) fetches this chunk. */
  claimedElsewhere(digestHex: string): boolean {
    const holder = this.#holder(join(this.#dir, digestHex));
    return holder !== undefined && holder !== this.#claimer;
  }

  /** Our claims are no longer live (in this process; a marker left behind is then nobody's). */
  close(): void {
    openClaimers.delete(this.#claimer);
    // the last claimer of a cache leaves no empty directory on tmpfs (a claimer still open checks
    // the directory on every claim, so one another user makes in its place is never used)
    if (this.#dirIno === undefined) return;
    try {
      rmdirSync(this.#dir);
    } catch {
      // not empty (another claimer's claims, or one left behind), or gone already
    }
  }
}
