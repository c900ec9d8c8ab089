/**
 * The ground the chunk-cache tests stand on: a real docker-registry, a worker pool, targets, a
 * work directory, a fresh cache directory for every use, caches opened on it with a captured log,
 * the chaos proxy in front of the registry, and cleanups run (bounded) after each test (the
 * registry, pool and targets are registry-bed.ts's). Calling
 * `chunkCacheBed` at a file's top level registers the hooks; the registry and pool are there from
 * the file's own beforeAll on.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, expect } from 'vitest';
import { ChunkCache } from '../../src/cache/chunk-cache.js';
import type { LazyDisk } from '../../src/cache/lazy-disk.js';
import { loadConfig, type SlipwayConfig } from '../../src/config.js';
import { HOLE, type IndexEntry } from '../../src/disk/format.js';
import { Targets } from '../../src/oci/open.js';
import { createLogger } from '../../src/util/log.js';
import { LogCapture, within } from './cache-checks.js';
import { startChaosProxy, type ChaosProxy } from './chaos-proxy.js';
import { tempDir } from './images.js';
import { registryBed, type RegistryBed } from './registry-bed.js';

export interface ChunkCacheBed extends RegistryBed {
  readonly work: string;
  /** things to close after the current test, newest first */
  readonly cleanups: (() => Promise<unknown> | unknown)[];
  /** a cache directory of its own for every use */
  freshDir(): string;
  /**
   * A cache with these settings (closed after the test; closing twice is harmless), logging at
   * info into `logs`. `requestTimeoutMs`: its registry requests' own timeout, where the cache's
   * would be its fetch deadline (a test that tells the two apart).
   */
  openCache(overrides: Partial<SlipwayConfig>, opts?: { requestTimeoutMs?: number }): Promise<{ cache: ChunkCache; logs: LogCapture; config: SlipwayConfig }>;
  /** the chaos proxy in front of the registry (stopped after the test) */
  chaos(): Promise<ChaosProxy>;
}

export function chunkCacheBed(prefix: string, opts: { cleanupBoundMs?: number } = {}): ChunkCacheBed {
  const base = registryBed();
  const work = tempDir(prefix);
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  let dirs = 0;

  afterEach(async () => {
    // bounded: a cache wedged by a bug must fail its own test, not hang the file
    while (cleanups.length > 0) await within(opts.cleanupBoundMs ?? 10_000, Promise.resolve(cleanups.pop()?.()), 'cleanup').catch(() => undefined);
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  const bed: ChunkCacheBed = {
    get registry() {
      return base.registry;
    },
    get pool() {
      return base.pool;
    },
    targets: base.targets,
    work,
    cleanups,
    freshDir: () => join(work, `cache-${++dirs}`),
    async openCache(overrides, opts = {}) {
      const logs = new LogCapture();
      const config = loadConfig({ XDG_CONFIG_HOME: join(work, 'no-config'), XDG_CACHE_HOME: join(work, 'xdg-cache') }, overrides);
      let targets: Targets | undefined;
      if (opts.requestTimeoutMs !== undefined) {
        const own = new Targets({ connections: config.connectionsPerHost, requestTimeoutMs: opts.requestTimeoutMs, plainHttpHosts: config.plainHttpRegistries });
        cleanups.push(() => own.close());
        targets = own;
      }
      const cache = await ChunkCache.open({ config, logger: createLogger({ out: logs, level: 'info' }), pool: bed.pool, ...(targets ? { targets } : {}) });
      let closed = false;
      const close = cache.close.bind(cache);
      cache.close = async () => {
        if (closed) return;
        closed = true;
        await close();
      };
      cleanups.push(() => cache.close());
      return { cache, logs, config };
    },
    async chaos() {
      const proxy = await startChaosProxy({ target: bed.registry.host });
      cleanups.push(() => proxy.stop());
      return proxy;
    },
  };
  return bed;
}

/** The sha256 (hex) of chunk `n` of a disk, which must not be a hole. */
export function chunkHex(disk: LazyDisk, n: number): string {
  const e = disk.artifact.index.map[n] as number;
  expect(e).not.toBe(HOLE);
  return (disk.artifact.index.entries[e] as IndexEntry).digest.toString('hex');
}
