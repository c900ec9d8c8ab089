import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SlipwayError } from '../errors.js';
import { ChunkCache } from '../cache/chunk-cache.js';
import { loadConfig } from '../config.js';
import { serveDisk } from '../serve/backend.js';
import { createLogger } from '../util/log.js';
import { parseCommand, parseNonNegativeInt } from './args.js';
import type { CommandIO } from './disk-commands.js';

const USAGE = 'slipway serve <ref> --socket <path> [--rw] [--overlay <dir>] [--queues N] [--cache-dir DIR]';

/** slipway serve: run slipway-blk for a disk until SIGINT/SIGTERM, answering its misses. */
export async function serveCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parseCommand('serve', argv, {
    socket: { type: 'string' }, rw: { type: 'boolean' }, overlay: { type: 'string' }, queues: { type: 'string' }, 'cache-dir': { type: 'string' },
  }, { min: 1, max: 1, usage: USAGE });
  if (!values.socket) throw new SlipwayError('USAGE', `serve: --socket is required\nusage: ${USAGE}`);
  if (values.overlay && !values.rw) throw new SlipwayError('USAGE', 'serve: --overlay needs --rw');
  const queues = values.queues ? parseNonNegativeInt(values.queues, '--queues') : 1;
  if (queues < 1 || queues > 16) throw new SlipwayError('INVALID_ARGUMENT', `--queues must be 1 to 16 (got ${queues})`);
  const logger = createLogger({ out: io.stderr, level: 'info' });
  const config = loadConfig(process.env, values['cache-dir'] ? { cacheDir: values['cache-dir'] } : {});
  const cache = await ChunkCache.open({ config, logger });
  const workDir = await mkdtemp(join(tmpdir(), 'slipway-serve-'));
  try {
    const served = await serveDisk({
      cache, ref: positionals[0] as string, socket: values.socket, workDir, readWrite: values.rw === true, queues,
      ...(values.overlay ? { overlayDir: values.overlay } : {}),
    });
    logger.info('serving', { disk: served.disk.reference, digest: served.disk.digest, socket: values.socket, overlay: served.overlayDir ?? null, queues });
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
