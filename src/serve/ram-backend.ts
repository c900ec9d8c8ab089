/**
 * Lazy memory (docs/snapshots.md): a memory snapshot's RAM image served by slipway-ramfs
 * (vhost-user-blk/ramfs.c) as the file `<workDir>/ram/ram` on FUSE. QEMU maps it shared as guest
 * RAM and passes it on to slipway-blk; every page either touches first is loaded from the image's
 * chunks (tier 1, or fetched and verified through this process's miss server), so a restore resumes
 * before the RAM is downloaded. Guest writes come back (page-cache write-back) into a copy-on-write
 * overlay on tmpfs, whose dirty bitmap is what the guest changed since the restore. slipway-ramfs
 * appends every chunk it reads for the first time to a trace: the restore's working set.
 */
import { accessSync, constants, existsSync } from 'node:fs';
import { lstat, mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ChunkCache } from '../cache/chunk-cache.js';
import type { LazyDisk } from '../cache/lazy-disk.js';
import { SlipwayError } from '../errors.js';
import { PROJECT_ROOT } from '../guest/build.js';
import { fileTail } from '../util/file-tail.js';
import { processesWithArgument, processHasArgument, processRunning, terminateProcess } from '../util/process.js';
import { spawnDetached, type DetachedChild } from '../util/spawner.js';
import { writeDiskMap } from './disk-map.js';
import { startMissServer, type MissServer } from './miss-server.js';

const run = promisify(execFile);

/**
 * Requests at a time that load the rest of a lazily restored VM's RAM into tier 1 in the
 * background: one. The VM runs meanwhile, and each chunk costs this host's CPU (decoded, verified,
 * written), which the VM's own next pages need too.
 */
export const RAM_FILL_CONCURRENCY = 1;
const READY_TIMEOUT_MS = 15_000;

export function ramfsBinary(): string {
  return join(PROJECT_ROOT, 'vhost-user-blk', 'build', 'slipway-ramfs');
}

/**
 * Whether this host can serve RAM lazily: the slipway-ramfs binary (libfuse3), `/dev/fuse`, and
 * either root or fusermount3 for the mount. `why` says what is missing (a restore then loads the
 * whole RAM before resuming).
 */
export function lazyMemorySupport(): { ok: true } | { ok: false; why: string } {
  if (!existsSync(ramfsBinary())) return { ok: false, why: `${ramfsBinary()} is not built (make -C vhost-user-blk; it needs libfuse3-dev)` };
  try {
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK);
  } catch {
    return { ok: false, why: '/dev/fuse is missing or not usable by this user' };
  }
  if (process.getuid?.() !== 0 && !['/usr/bin/fusermount3', '/bin/fusermount3'].some((p) => existsSync(p))) return { ok: false, why: 'not root and no fusermount3 (Debian: fuse3)' };
  return { ok: true };
}

export interface ServedRam {
  /** the file QEMU maps as guest RAM */
  file: string;
  /** the image, opened through the chunk cache (its artifact is the next snapshot's delta base) */
  disk: LazyDisk;
  /** the copy-on-write overlay: `data` and the dirty bitmap `dirty` (docs/vhost-user-blk.md) */
  overlayDir: string;
  pid: number;
  miss: MissServer;
  running(): boolean;
  log(): string;
  /**
   * The chunks read so far, in the order they were first read (the working set). Errors: the
   * trace file's read errors.
   */
  touched(): Promise<number[]>;
  /** Write every dirty page back into the overlay and make the overlay durable (before reading it). */
  flush(): Promise<void>;
  /** Stop serving: the VMM must be gone. Unmounts, stops slipway-ramfs, removes the overlay. */
  close(): Promise<void>;
}

/**
 * Serve `disk` (a RAM image) under `workDir/ram`, its overlay in `overlayDir` (on tmpfs: it holds
 * guest memory; mode 0700). Detached, in its own session, so a VM outlives a daemon restart.
 * Errors: IO_ERROR when slipway-ramfs cannot start or mount (its log in the message).
 */
export async function serveRam(opts: { cache: ChunkCache; disk: LazyDisk; workDir: string; overlayDir: string }): Promise<ServedRam> {
  const { workDir, overlayDir, disk } = opts;
  const mount = join(workDir, 'ram');
  const mapPath = join(workDir, 'ram.map');
  const missPath = join(workDir, 'ram-miss.sock');
  const tracePath = join(workDir, 'ram.trace');
  const outPath = join(workDir, 'ramfs.out');
  const logPath = join(workDir, 'ramfs.log');
  await mkdir(mount, { recursive: true, mode: 0o700 });
  await mkdir(overlayDir, { recursive: true, mode: 0o700 });
  await writeDiskMap(disk.artifact, mapPath);
  const miss = await startMissServer(missPath, disk, opts.cache);
  const args = ['--mount', mount, '--map', mapPath, '--chunk-dir', opts.cache.chunkDir, '--overlay', overlayDir, '--daemon-socket', missPath, '--trace', tracePath];
  const log = (): string => fileTail(logPath, 64_000);
  let child: DetachedChild | undefined;
  let exited: Promise<number | null>;
  let poll: NodeJS.Timeout | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    child = await spawnDetached(ramfsBinary(), args, { stdout: { path: outPath }, stderr: { path: logPath, append: true } }).catch((err: Error) => {
      throw new SlipwayError('IO_ERROR', `cannot start slipway-ramfs: ${err.message}`);
    });
    exited = child.exited.then((e) => e.code);
    await new Promise<void>((resolve, reject) => {
      void exited.then((code) => reject(new SlipwayError('IO_ERROR', `slipway-ramfs exited at start (${code}): ${log().trim()}`)));
      timer = setTimeout(() => reject(new SlipwayError('IO_ERROR', `slipway-ramfs did not mount within ${READY_TIMEOUT_MS} ms: ${log().trim()}`)), READY_TIMEOUT_MS);
      poll = setInterval(() => {
        if (fileTail(outPath, 64).includes('ready\n')) resolve();
      }, 5);
    });
  } catch (err) {
    child?.kill('SIGKILL');
    await unmountLazily(mount);
    await miss.close();
    await rm(overlayDir, { recursive: true, force: true });
    throw err;
  } finally {
    clearInterval(poll);
    clearTimeout(timer);
  }
  const started = child;
  const running = (): boolean => started.running();
  // chunk files stay pinned in slipway-ramfs's name while it runs, even with no daemon
  const pin = disk.pinFor(started.pid, 'ramfs');
  // what an adopting daemon needs to serve its misses again (adoptRam)
  await writeFile(join(workDir, RAM_REF_FILE), disk.reference, { mode: 0o600 });
  return servedRam({
    ...opts, miss, pid: started.pid, running,
    stop: async () => {
      if (!running()) return;
      started.kill('SIGTERM');
      const t = setTimeout(() => started.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
    unpin: () => opts.cache.unpin(pin),
  });
}

/** Detach a FUSE mount even while something still has it open (a server that died leaves one). */
async function unmountLazily(mount: string): Promise<void> {
  await run('umount', ['-l', mount]).catch(() => undefined);
}

/** The file in a VM's work directory naming the RAM image it serves (for adoptRam). */
const RAM_REF_FILE = 'ram.ref';

/**
 * After a daemon restart: the slipway-ramfs of a lazily restored VM, found running again, gets its
 * miss server back (misses wait for it while no daemon answers, up to 30 s, then reconnect) and
 * the rest of its RAM is loaded into tier 1 at background priority again. Undefined when the VM has no
 * lazy RAM or its server is gone.
 */
export async function adoptRam(opts: { cache: ChunkCache; workDir: string; overlayDir: string }): Promise<ServedRam | undefined> {
  const mount = join(opts.workDir, 'ram');
  const ref = await readFile(join(opts.workDir, RAM_REF_FILE), 'utf8').catch(() => undefined);
  const pid = processesWithArgument(mount)[0];
  if (ref === undefined || pid === undefined) return undefined;
  const disk = await opts.cache.openDisk(ref, { useProfile: false, memoryTier: false });
  const miss = await startMissServer(join(opts.workDir, 'ram-miss.sock'), disk, opts.cache);
  void disk.fillInBackground({ concurrency: RAM_FILL_CONCURRENCY });
  const running = (): boolean => processRunning(pid) && processHasArgument(pid, mount);
  // (its chunk pin, taken in its name by the daemon that started it, lasts as long as it runs)
  return servedRam({ cache: opts.cache, disk, workDir: opts.workDir, overlayDir: opts.overlayDir, miss, pid, running, stop: () => terminateProcess(pid, 5000), unpin: () => undefined });
}

/** The file serveRam serves a RAM image as, in `workDir` (ServedRam.file): known before it is there. */
export function servedRamFile(workDir: string): string {
  return join(workDir, 'ram', 'ram');
}

function servedRam(p: { cache: ChunkCache; disk: LazyDisk; workDir: string; overlayDir: string; miss: MissServer; pid: number; running: () => boolean; stop: () => Promise<void>; unpin: () => void }): ServedRam {
  const mount = join(p.workDir, 'ram');
  const file = servedRamFile(p.workDir);
  let closed = false;
  return {
    file, disk: p.disk, overlayDir: p.overlayDir, pid: p.pid, miss: p.miss, running: p.running,
    log: () => fileTail(join(p.workDir, 'ramfs.log'), 64_000),
    async touched() {
      const b = await readFile(join(p.workDir, 'ram.trace'));
      const out: number[] = [];
      for (let at = 0; at + 8 <= b.byteLength; at += 8) out.push(Number(b.readBigUInt64LE(at)));
      return out;
    },
    async flush() {
      const fh = await open(file, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      await p.stop();
      await unmountLazily(mount);
      await p.miss.close();
      p.unpin();
      await rm(p.overlayDir, { recursive: true, force: true });
      await rm(join(p.workDir, 'ram.map'), { force: true });
    },
  };
}

/**
 * What a lazily restored VM may leave when nobody holds its ServedRam (a VM adopted after a daemon
 * restart, or one that could not be adopted): its slipway-ramfs stopped, the mount gone, the
 * overlay removed. Harmless when there is nothing. Call it only once the VMM has exited. The
 * overlay lives under a predictable name in world-writable `/dev/shm`: it is removed only when it
 * is a real directory of this user's (the sticky bit keeps others from swapping it after that);
 * a name another user made first is left alone.
 */
export async function stopLeftoverRam(workDir: string, overlayDir: string): Promise<void> {
  const mount = join(workDir, 'ram');
  for (const pid of processesWithArgument(mount)) await terminateProcess(pid, 2000);
  if (existsSync(join(workDir, 'ram.map'))) await unmountLazily(mount);
  const st = await lstat(overlayDir).catch(() => undefined);
  if (st?.isDirectory() && st.uid === process.getuid?.()) await rm(overlayDir, { recursive: true, force: true });
}
