/**
 * Starting slipway-blk (vhost-user-blk/, built by `make`) for a disk, and serving its misses.
 * `serveDisk` is what `slipway serve` and `slipway run <ref>` use.
 */
import { envVar } from '../config.js';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileTail } from '../util/file-tail.js';
import { processHasArgument, processRunning, whenProcessGone } from '../util/process.js';
import { spawnDetached, spawnHelperBinary, type DetachedChild } from '../util/spawner.js';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SlipwayError } from '../errors.js';
import type { ChunkCache } from '../cache/chunk-cache.js';
import type { LazyDisk, OpenDiskOptions, SavedProfile } from '../cache/lazy-disk.js';
import { PROJECT_ROOT } from '../guest/build.js';
import { qemuPreloadLibraries } from '../vmm/qemu.js';
import { writeDiskMap } from './disk-map.js';
import { startMissServer, type MissServer } from './miss-server.js';
import { ramfsBinary } from './ram-backend.js';

/**
 * What is fetched besides the guest's own misses (`slipway serve --prefetch`):
 * - `profile` (the default): the disk's boot profile, if it has one, at once and in order; and
 *   speculation on every miss (the next chunks of the same pack), so a disk never booted before
 *   boots fast too;
 * - `all`: that, then the rest of the disk at background priority while the VM runs;
 * - `none`: only what the guest reads (and no profile is recorded).
 */
export type PrefetchMode = 'all' | 'profile' | 'none';
export const PREFETCH_MODES: readonly PrefetchMode[] = ['all', 'profile', 'none'];
export const DEFAULT_PREFETCH: PrefetchMode = 'profile';

/** The open options a prefetch mode stands for. */
export function prefetchOpenOptions(mode: PrefetchMode): OpenDiskOptions {
  if (mode === 'none') return { useProfile: false, speculate: false };
  return { useProfile: true, speculate: true, fill: mode === 'all' };
}

/** How long slipway-blk may take to listen on its socket (it takes milliseconds). */
const READY_TIMEOUT_MS = 30_000;

/** The slipway-blk binary: $SLIPWAY_BLK, else the repository's build (read when asked, not at import). */
export function backendBinary(env: NodeJS.ProcessEnv = process.env): string {
  return envVar('SLIPWAY_BLK', env) ?? join(PROJECT_ROOT, 'vhost-user-blk', 'build', 'slipway-blk');
}

export interface ServeOptions {
  cache: ChunkCache;
  ref: string;
  /** the vhost-user socket the VMM connects to */
  socket: string;
  /** a private directory for the disk map and the miss socket */
  workDir: string;
  readWrite: boolean;
  /** the copy-on-write overlay (default: workDir/overlay when read-write) */
  overlayDir?: string;
  queues?: number;
  /** what to fetch besides the guest's misses (default DEFAULT_PREFETCH); `openOptions` override it */
  prefetch?: PrefetchMode;
  openOptions?: OpenDiskOptions;
  /**
   * Store the boot profile being recorded (see OpenDiskOptions.recordProfileIfMissing) once the
   * backend has sent no miss for this many milliseconds after its first (the guest has settled),
   * and at close if it has not been stored by then (`slipway serve`; `run` and the daemon store it
   * when the agent answers instead).
   */
  saveProfileWhenQuietMs?: number;
  /** called with where the profile went (undefined: nothing to store) or the error */
  onProfileSaved?: (saved: SavedProfile | undefined, err?: unknown) => void;
  /**
   * the backend outlives this process (the daemon's VMs): its chunk files are pinned in its name.
   * Otherwise it stops when this process has exited, however it went (slipway-blk `--owner-pid`).
   * Every backend runs in its own session with its output in workDir (backend.out, backend.log).
   */
  detached?: boolean;
  /** extra environment for the backend (e.g. ASAN_OPTIONS in tests) */
  env?: NodeJS.ProcessEnv;
  binary?: string;
}

export interface ServedDisk {
  disk: LazyDisk;
  socket: string;
  overlayDir: string | undefined;
  /** the backend's process id */
  pid: number;
  /** whether the backend is still running */
  running(): boolean;
  miss: MissServer;
  /** the backend's JSON log lines so far */
  log(): string;
  readonly exited: Promise<number | null>;
  close(): Promise<void>;
}

/** `make -C vhost-user-blk` (its default target: slipway-blk, slipway-ramfs, libslipway-nohugepage.so). */
function makeBackend(): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn('make', ['-s', '-C', join(PROJECT_ROOT, 'vhost-user-blk')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new SlipwayError('BUILD_FAILED', `building slipway-blk failed: ${err.slice(-2000)}`))));
  });
}

/** Whether this process has tried to build the preload libraries (see ensureBackendBuilt). */
let restTried = false;

/**
 * The slipway-blk binary, built first when it is missing (BUILD_FAILED when that fails). Where it
 * and slipway-ramfs are there but a preload library (libslipway-nohugepage.so,
 * libslipway-restore-wait.so) or slipway-spawn is not (a checkout built before it existed), the build is tried
 * once per process, and its failure is not this function's (a lazy restore runs without the
 * libraries, and says so). A host that could not build slipway-ramfs (no libfuse3) is not asked
 * again on every start.
 */
export async function ensureBackendBuilt(onLine?: (l: string) => void): Promise<string> {
  const binary = backendBinary();
  if (existsSync(binary)) {
    if (!restTried && existsSync(ramfsBinary()) && [...qemuPreloadLibraries(), spawnHelperBinary()].some((f) => !existsSync(f))) {
      restTried = true;
      await makeBackend().catch(() => undefined);
    }
    return binary;
  }
  onLine?.('backend: building slipway-blk');
  await makeBackend();
  return binary;
}

export async function serveDisk(opts: ServeOptions): Promise<ServedDisk> {
  const binary = opts.binary ?? (await ensureBackendBuilt());
  await mkdir(opts.workDir, { recursive: true });
  // slipway-blk reads tier-1 files: chunks are not kept in memory as well (OpenDiskOptions.memoryTier)
  const disk = await opts.cache.openDisk(opts.ref, { memoryTier: false, ...prefetchOpenOptions(opts.prefetch ?? DEFAULT_PREFETCH), ...opts.openOptions });
  const mapPath = join(opts.workDir, 'disk.map');
  const missPath = join(opts.workDir, 'miss.sock');
  await writeDiskMap(disk.artifact, mapPath);
  // the profile is stored once the guest has been quiet (no miss) for saveProfileWhenQuietMs
  let saving: Promise<void> | undefined;
  const saveProfile = (): Promise<void> => {
    if (saving || !disk.recordingProfile) return saving ?? Promise.resolve();
    clearTimeout(quiet);
    saving = disk.saveProfile().then((saved) => opts.onProfileSaved?.(saved), (err: unknown) => opts.onProfileSaved?.(undefined, err));
    return saving;
  };
  let quiet: NodeJS.Timeout | undefined;
  const quietMs = opts.saveProfileWhenQuietMs;
  const onMiss = quietMs === undefined ? undefined : (): void => {
    if (saving || !disk.recordingProfile) return;
    clearTimeout(quiet);
    quiet = setTimeout(() => void saveProfile(), quietMs);
  };
  const miss = await startMissServer(missPath, disk, opts.cache, onMiss);
  const overlayDir = opts.readWrite ? (opts.overlayDir ?? join(opts.workDir, 'overlay')) : undefined;
  const args = ['--socket', opts.socket, '--map', mapPath, '--chunk-dir', opts.cache.chunkDir, '--daemon-socket', missPath, '--queues', String(opts.queues ?? 1), '--serial', disk.digest.slice(7, 27)];
  if (overlayDir) args.push('--overlay', overlayDir);
  else args.push('--read-only');
  // attached, it stops when this process has gone, however it went (SIGKILL, the OOM killer)
  if (!opts.detached) args.push('--owner-pid', String(process.pid));
  // its own session, its output in files, started without forking this process (src/util/spawner.ts);
  // detached, it keeps serving when the daemon is away (its chunk files pinned in its name)
  const outPath = join(opts.workDir, 'backend.out');
  const logPath = join(opts.workDir, 'backend.log');
  const readLog = (): string => fileTail(logPath, 64_000);
  let backend: DetachedChild;
  let exited: Promise<number | null>;
  let poll: NodeJS.Timeout | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    backend = await spawnDetached(binary, args, { env: { ...process.env, ...opts.env }, stdout: { path: outPath }, stderr: { path: logPath, append: true } }).catch((err: Error) => {
      throw new SlipwayError('IO_ERROR', `cannot start ${binary}: ${err.message}`);
    });
    exited = backend.exited.then((e) => e.code);
    await new Promise<void>((resolve, reject) => {
      void exited.then((code) => reject(new SlipwayError('IO_ERROR', `slipway-blk exited at start (${code}): ${readLog().trim()}`)));
      timer = setTimeout(() => {
        backend.kill('SIGKILL');
        reject(new SlipwayError('IO_ERROR', `slipway-blk did not get ready within ${READY_TIMEOUT_MS} ms: ${readLog().trim()}`));
      }, READY_TIMEOUT_MS);
      // the ready line lands in backend.out
      poll = setInterval(() => {
        if (fileTail(outPath, 4096).includes('\n')) resolve();
      }, 10);
    });
  } catch (err) {
    clearTimeout(quiet);
    await miss.close();
    await disk.close();
    throw err;
  } finally {
    clearInterval(poll);
    clearTimeout(timer);
  }
  // a detached backend reads chunk files while no daemon holds the disk open: pin them in its name
  const backendPin = opts.detached ? disk.pinFor(backend.pid, 'backend') : undefined;
  const plain = servedDisk({ disk, socket: opts.socket, overlayDir, miss, mapPath, pid: backend.pid, exited, log: readLog, kill: (sig) => backend.kill(sig), running: () => backend.running() });
  // with saveProfileWhenQuietMs, the export's close stores a profile not stored yet
  const served: ServedDisk = quietMs === undefined ? plain : { ...plain, close: async () => {
    clearTimeout(quiet);
    await saveProfile();
    await plain.close();
  } };
  if (!backendPin) return served;
  return { ...served, close: async () => {
    await served.close();
    opts.cache.unpin(backendPin);
  } };
}

/**
 * A backend started detached by an earlier daemon, found running again: the disk is opened again
 * and its miss server listens again on the same socket, where the backend reconnects on its next
 * miss (misses failed while no daemon answered; cached chunks were served throughout).
 */
export async function adoptDisk(opts: { cache: ChunkCache; ref: string; socket: string; workDir: string; pid: number; overlayDir?: string; openOptions?: OpenDiskOptions }): Promise<ServedDisk | undefined> {
  if (!processRunning(opts.pid) || !processHasArgument(opts.pid, opts.workDir)) return undefined;
  const disk = await opts.cache.openDisk(opts.ref, { useProfile: false, memoryTier: false, ...opts.openOptions });
  const missPath = join(opts.workDir, 'miss.sock');
  const miss = await startMissServer(missPath, disk, opts.cache);
  const pid = opts.pid;
  return servedDisk({
    disk, socket: opts.socket, overlayDir: opts.overlayDir, miss, mapPath: join(opts.workDir, 'disk.map'), pid,
    exited: whenProcessGone(pid, opts.workDir).then(() => null), log: () => fileTail(join(opts.workDir, 'backend.log'), 64_000),
    kill: (sig) => {
      // the pid is signalled only while it still is this VM's backend (after exit it may be reused)
      if (!processHasArgument(pid, opts.workDir)) return;
      try {
        process.kill(pid, sig);
      } catch {
        // gone already
      }
    },
    running: () => processRunning(pid) && processHasArgument(pid, opts.workDir),
  });
}

function servedDisk(p: { disk: LazyDisk; socket: string; overlayDir: string | undefined; miss: MissServer; mapPath: string; pid: number; exited: Promise<number | null>; log: () => string; kill: (sig: NodeJS.Signals) => void; running: () => boolean }): ServedDisk {
  let closed = false;
  return {
    disk: p.disk, socket: p.socket, overlayDir: p.overlayDir, miss: p.miss, exited: p.exited, pid: p.pid,
    log: p.log,
    running: p.running,
    async close() {
      if (closed) return;
      closed = true;
      if (p.running()) {
        p.kill('SIGTERM');
        const timer = setTimeout(() => p.kill('SIGKILL'), 5000);
        await p.exited;
        clearTimeout(timer);
      }
      await p.miss.close();
      await p.disk.close();
      await rm(p.mapPath, { force: true });
    },
  };
}
