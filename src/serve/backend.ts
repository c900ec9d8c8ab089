/**
 * Starting slipway-blk (vhost-user-blk/, built by `make`) for a disk, and serving its misses.
 * `serveDisk` is what `slipway serve` and `slipway run <ref>` use.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { SlipwayError } from '../errors.js';
import type { ChunkCache } from '../cache/chunk-cache.js';
import type { LazyDisk, OpenDiskOptions } from '../cache/lazy-disk.js';
import { PROJECT_ROOT } from '../guest/build.js';
import { writeDiskMap } from './disk-map.js';
import { startMissServer, type MissServer } from './miss-server.js';

export const BACKEND_BINARY = process.env.SLIPWAY_BLK ?? join(PROJECT_ROOT, 'vhost-user-blk', 'build', 'slipway-blk');

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
  openOptions?: OpenDiskOptions;
  /** extra environment for the backend (e.g. ASAN_OPTIONS in tests) */
  env?: NodeJS.ProcessEnv;
  binary?: string;
}

export interface ServedDisk {
  disk: LazyDisk;
  socket: string;
  overlayDir: string | undefined;
  backend: ChildProcess;
  miss: MissServer;
  /** the backend's JSON log lines so far */
  log(): string;
  readonly exited: Promise<number | null>;
  close(): Promise<void>;
}

export async function ensureBackendBuilt(onLine?: (l: string) => void): Promise<string> {
  if (existsSync(BACKEND_BINARY)) return BACKEND_BINARY;
  onLine?.('backend: building slipway-blk');
  await new Promise<void>((resolve, reject) => {
    const child = spawn('make', ['-s', '-C', join(PROJECT_ROOT, 'vhost-user-blk')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new SlipwayError('BUILD_FAILED', `building slipway-blk failed: ${err.slice(-2000)}`))));
  });
  return BACKEND_BINARY;
}

export async function serveDisk(opts: ServeOptions): Promise<ServedDisk> {
  const binary = opts.binary ?? (await ensureBackendBuilt());
  await mkdir(opts.workDir, { recursive: true });
  const disk = await opts.cache.openDisk(opts.ref, opts.openOptions ?? {});
  const mapPath = join(opts.workDir, 'disk.map');
  const missPath = join(opts.workDir, 'miss.sock');
  await writeDiskMap(disk.artifact, mapPath);
  const miss = await startMissServer(missPath, disk, opts.cache.logger, (hex) => opts.cache.disk.has(hex), (hex, data) => opts.cache.disk.put(hex, data));
  const overlayDir = opts.readWrite ? (opts.overlayDir ?? join(opts.workDir, 'overlay')) : undefined;
  const args = ['--socket', opts.socket, '--map', mapPath, '--chunk-dir', opts.cache.disk.chunkDir, '--daemon-socket', missPath, '--queues', String(opts.queues ?? 1), '--serial', disk.digest.slice(7, 27)];
  if (overlayDir) args.push('--overlay', overlayDir);
  else args.push('--read-only');
  const backend = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  let log = '';
  backend.stderr?.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-64_000);
  });
  const exited = new Promise<number | null>((resolve) => backend.once('exit', (code) => resolve(code)));
  try {
    await new Promise<void>((resolve, reject) => {
      const lines = createInterface({ input: backend.stdout as NodeJS.ReadableStream });
      lines.once('line', () => resolve());
      backend.once('error', (err) => reject(new SlipwayError('IO_ERROR', `cannot start ${binary}: ${err.message}`)));
      void exited.then((code) => reject(new SlipwayError('IO_ERROR', `slipway-blk exited at start (${code}): ${log.trim()}`)));
    });
  } catch (err) {
    await miss.close();
    await disk.close();
    throw err;
  }
  let closed = false;
  return {
    disk, socket: opts.socket, overlayDir, backend, miss, exited,
    log: () => log,
    async close() {
      if (closed) return;
      closed = true;
      if (backend.exitCode === null) {
        backend.kill('SIGTERM');
        const timer = setTimeout(() => backend.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      await miss.close();
      await disk.close();
      await rm(mapPath, { force: true });
    },
  };
}
