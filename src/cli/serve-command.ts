import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SlipwayError } from '../errors.js';
import { ChunkCache } from '../cache/chunk-cache.js';
import { loadConfig } from '../config.js';
import { DEFAULT_PREFETCH, PREFETCH_MODES, serveDisk, type PrefetchMode } from '../serve/backend.js';
import { createLogger } from '../util/log.js';
import { vhostUserBlkArgs } from '../vmm/qemu.js';
import { parseCommand, parseNonNegativeInt } from './args.js';
import type { CommandIO } from './args.js';

export const USAGE = 'slipway serve <ref> --socket <path> [--rw] [--overlay <dir>] [--queues N] [--prefetch all|profile|none] [--profile-quiet-ms MS] [--cache-dir DIR]';

/**
 * How long the guest must send no miss before the boot profile being recorded is stored (ms). A
 * boot's misses come in a stream; a pause this long means it has settled. A pause inside a boot
 * (a long CPU-bound stretch under TCG) ends the profile early, and the next boot, finding chunks
 * it lacked, refines it (see LazyDisk.saveProfile).
 */
const DEFAULT_PROFILE_QUIET_MS = 10_000;

/**
 * slipway serve: run slipway-blk for a disk until SIGINT/SIGTERM, answering its misses. The first
 * boot of a disk records its boot profile and stores it beside the disk once the guest has been
 * quiet for --profile-quiet-ms, or when the export closes.
 */
export async function serveCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parseCommand('serve', argv, {
    socket: { type: 'string' }, rw: { type: 'boolean' }, overlay: { type: 'string' }, queues: { type: 'string' }, 'cache-dir': { type: 'string' },
    prefetch: { type: 'string' }, 'profile-quiet-ms': { type: 'string' },
  }, { min: 1, max: 1, usage: USAGE });
  if (!values.socket) throw new SlipwayError('USAGE', `serve: --socket is required\nusage: ${USAGE}`);
  if (values.overlay && !values.rw) throw new SlipwayError('USAGE', 'serve: --overlay needs --rw');
  const queues = values.queues ? parseNonNegativeInt(values.queues, '--queues') : 1;
  if (queues < 1 || queues > 16) throw new SlipwayError('INVALID_ARGUMENT', `--queues must be 1 to 16 (got ${queues})`);
  const prefetch = (values.prefetch ?? DEFAULT_PREFETCH) as PrefetchMode;
  if (!PREFETCH_MODES.includes(prefetch)) throw new SlipwayError('USAGE', `serve: --prefetch must be one of ${PREFETCH_MODES.join(', ')} (got ${JSON.stringify(values.prefetch)})`);
  const quietMs = values['profile-quiet-ms'] ? parseNonNegativeInt(values['profile-quiet-ms'], '--profile-quiet-ms') : DEFAULT_PROFILE_QUIET_MS;
  const logger = createLogger({ out: io.stderr, level: 'info' });
  const config = loadConfig(process.env, values['cache-dir'] ? { cacheDir: values['cache-dir'] } : {});
  const cache = await ChunkCache.open({ config, logger });
  const workDir = await mkdtemp(join(tmpdir(), 'slipway-serve-'));
  try {
    // a long-running server: decode threads and tier 1's directories ready before the guest's first miss
    await cache.warmUp();
    const served = await serveDisk({
      cache, ref: positionals[0] as string, socket: values.socket, workDir, readWrite: values.rw === true, queues, prefetch,
      ...(values.overlay ? { overlayDir: values.overlay } : {}),
      ...(prefetch === 'none' ? {} : { openOptions: { recordProfileIfMissing: true }, saveProfileWhenQuietMs: quietMs }),
      onProfileSaved: (saved, err) => {
        if (err) logger.warn('could not store the boot profile', { error: (err as Error).message });
        else if (saved) logger.info('boot profile stored', { ...saved });
      },
    });
    const disk = served.disk;
    logger.info('serving', {
      disk: disk.reference, digest: disk.digest, socket: values.socket, backendPid: served.pid, overlay: served.overlayDir ?? null, queues, prefetch,
      profile: disk.openedWithProfile ?? null, recordingProfile: disk.recordingProfile, connect: vmmArguments(values.socket, queues),
    });
    void disk.profilePrefetch?.then((r) => {
      if (r) logger.info('boot profile prefetched', { chunks: disk.stats.profileChunks, fetchedChunks: r.fetchedChunks, ms: Math.round(r.ms) });
    });
    const stop = new Promise<string>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'));
      process.once('SIGTERM', () => resolve('SIGTERM'));
    });
    const why = await Promise.race([stop, served.exited.then((code) => `backend exited (${code})`)]);
    await served.close();
    io.stderr.write(served.log());
    logger.info('stopped', { why, misses: served.miss.stats, disk: served.disk.stats, cache: cache.stats().remote });
    return why.startsWith('backend') ? 1 : 0;
  } finally {
    await cache.close();
    await rm(workDir, { recursive: true, force: true });
  }
}

/**
 * How a VMM attaches the export, as the arguments to add to its command line (`<size>`: the
 * guest's memory, which must be shared with the backend). QEMU: the QEMU driver's own
 * vhost-user-blk arguments (`vhostUserBlkArgs`), on q35 with a shared memory backend; Cloud Hypervisor:
 * `--disk vhost_user=true` and `--memory shared=on` (its docs/vhost-user-blk-testing.md).
 */
export function vmmArguments(socket: string, queues: number): { qemu: string; cloudHypervisor: string } {
  return {
    qemu: `-machine q35,memory-backend=mem -m <size> -object memory-backend-memfd,id=mem,size=<size>,share=on ${vhostUserBlkArgs('slipway0', socket, queues).join(' ')}`,
    cloudHypervisor: `--memory size=<size>,shared=on --disk vhost_user=true,socket=${socket},num_queues=${queues},queue_size=128`,
  };
}
