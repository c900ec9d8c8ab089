import { SlipwayError } from '../errors.js';
import { ChunkCache } from '../cache/chunk-cache.js';
import { loadConfig } from '../config.js';
import { createLogger } from '../util/log.js';
import { createProgress } from '../util/progress.js';
import { parseCommand, parseNonNegativeInt, parseSize, progressMode, type CommandIO, type CommandSpec } from './args.js';

const USAGE = {
  read: 'slipway read <ref> --offset N --length N [--cache-dir DIR] [--stats]',
  stats: 'slipway cache stats [--cache-dir DIR]',
  prefetch: 'slipway cache prefetch <ref> [--cache-dir DIR] [--progress MODE]',
  gc: 'slipway cache gc [--max-size SIZE] [--cache-dir DIR]',
} as const;
const CACHE_USAGE = [USAGE.stats, USAGE.prefetch, USAGE.gc].join('\n       ');

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
    min: 1, max: 1, usage: USAGE.read,
  });
  if (values.offset === undefined || values.length === undefined) throw new SlipwayError('USAGE', `read: --offset and --length are required\nusage: ${USAGE.read}`);
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
      const { values } = parseCommand('cache stats', rest, { ...CACHE_OPTIONS }, { min: 0, max: 0, usage: USAGE.stats });
      return withCache(values['cache-dir'], io, async (cache) => {
        const s = cache.stats();
        io.stdout.write(`${JSON.stringify({ cacheDir: cache.config.cacheDir, disk: s.disk, metadata: s.metadata, memoryBudgetBytes: s.memory.budgetBytes, mirrors: cache.config.mirrors }, null, 2)}\n`);
        return 0;
      });
    }
    case 'prefetch': {
      const { values, positionals } = parseCommand('cache prefetch', rest, { ...CACHE_OPTIONS, progress: { type: 'string' } }, { min: 1, max: 1, usage: USAGE.prefetch });
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
      const { values } = parseCommand('cache gc', rest, { ...CACHE_OPTIONS, 'max-size': { type: 'string' } }, { min: 0, max: 0, usage: USAGE.gc });
      const max = values['max-size'] !== undefined ? parseSize(values['max-size'], '--max-size') : undefined;
      return withCache(values['cache-dir'], io, async (cache) => {
        const result = cache.gc(max);
        io.stdout.write(`${JSON.stringify({ ...result, disk: cache.stats().disk })}\n`);
        return 0;
      });
    }
    default:
      throw new SlipwayError('USAGE', `cache: ${sub ? `unknown subcommand ${JSON.stringify(sub)}` : 'give a subcommand'}\nusage: ${CACHE_USAGE}`);
  }
}

export const CACHE_COMMANDS: CommandSpec[] = [
  { name: 'read', help: [{ usage: USAGE.read, summary: 'bytes of a disk to stdout, fetched lazily through the chunk cache' }], run: readCommand },
  {
    name: 'cache',
    help: [
      { usage: USAGE.stats, summary: 'what the host chunk cache holds' },
      { usage: USAGE.prefetch, summary: 'fill the cache with a whole disk (low priority)' },
      { usage: USAGE.gc, summary: 'evict least-recently-used chunks, reconcile the cache directory' },
    ],
    run: cacheCommand,
  },
];
