import { SlipwayError } from '../errors.js';
import { ChunkCache } from '../cache/chunk-cache.js';
import { loadConfig } from '../config.js';
import { createLogger } from '../util/log.js';
import { createProgress } from '../util/progress.js';
import { parseCommand, parseNonNegativeInt, parseSize } from './args.js';
import type { CommandIO } from './disk-commands.js';
import { progressMode } from './disk-commands.js';

export const CACHE_OPTIONS = {
  'cache-dir': { type: 'string' },
  'plain-http': { type: 'boolean' },
} as const;

async function withCache<T>(cacheDir: string | undefined, io: CommandIO, fn: (cache: ChunkCache) => Promise<T>): Promise<T> {
  const config = loadConfig(process.env, cacheDir ? { cacheDir } : {});
  const cache = await ChunkCache.open({ config, logger: createLogger({ out: io.stderr }) });
  try {
    return await fn(cache);
  } finally {
    await cache.close();
  }
}

/** slipway read <ref> --offset N --length N: bytes of a disk to stdout, through the cache. */
export async function readCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parseCommand('read', argv, { ...CACHE_OPTIONS, offset: { type: 'string' }, length: { type: 'string' }, stats: { type: 'boolean' } }, {
    min: 1, max: 1, usage: 'slipway read <ref> --offset N --length N [--cache-dir DIR] [--stats]',
  });
  if (values.offset === undefined || values.length === undefined) throw new SlipwayError('USAGE', 'read: --offset and --length are required\nusage: slipway read <ref> --offset N --length N');
  const offset = parseNonNegativeInt(values.offset, '--offset');
  const length = parseNonNegativeInt(values.length, '--length');
  return withCache(values['cache-dir'], io, async (cache) => {
    const disk = await cache.openDisk(positionals[0] as string);
    const data = await disk.read(offset, length);
    await new Promise<void>((resolve, reject) => io.stdout.write(data, (err) => (err ? reject(err) : resolve())));
    if (values.stats) io.stderr.write(`${JSON.stringify({ disk: disk.stats, cache: cache.stats() })}\n`);
    return 0;
  });
}

export async function cacheCommand(argv: string[], io: CommandIO): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'stats': {
      const { values } = parseCommand('cache stats', rest, { ...CACHE_OPTIONS }, { min: 0, max: 0, usage: 'slipway cache stats [--cache-dir DIR]' });
      return withCache(values['cache-dir'], io, async (cache) => {
        const s = cache.stats();
        io.stdout.write(`${JSON.stringify({ cacheDir: cache.config.cacheDir, disk: s.disk, memoryBudgetBytes: s.memory.budgetBytes, mirrors: cache.config.mirrors }, null, 2)}\n`);
        return 0;
      });
    }
    case 'prefetch': {
      const { values, positionals } = parseCommand('cache prefetch', rest, { ...CACHE_OPTIONS, progress: { type: 'string' } }, { min: 1, max: 1, usage: 'slipway cache prefetch <ref> [--cache-dir DIR]' });
      const progress = createProgress(progressMode(values.progress), io.stderr);
      return withCache(values['cache-dir'], io, async (cache) => {
        const disk = await cache.openDisk(positionals[0] as string, { useProfile: false });
        const result = await disk.prefetch({ ...(progress.onProgress ? { onProgress: progress.onProgress } : {}) });
        progress.finish();
        io.stdout.write(`${JSON.stringify({ reference: disk.reference, digest: disk.digest, ...result, remote: cache.stats().remote })}\n`);
        return 0;
      });
    }
    case 'gc': {
      const { values } = parseCommand('cache gc', rest, { ...CACHE_OPTIONS, 'max-size': { type: 'string' } }, { min: 0, max: 0, usage: 'slipway cache gc [--max-size SIZE] [--cache-dir DIR]' });
      const max = values['max-size'] !== undefined ? parseSize(values['max-size'], '--max-size') : undefined;
      return withCache(values['cache-dir'], io, async (cache) => {
        const result = cache.gc(max);
        io.stdout.write(`${JSON.stringify({ ...result, disk: cache.stats().disk })}\n`);
        return 0;
      });
    }
    default:
      throw new SlipwayError('USAGE', `cache: unknown subcommand ${JSON.stringify(sub ?? '')}\nusage: slipway cache stats|prefetch <ref>|gc [--max-size SIZE]`);
  }
}
