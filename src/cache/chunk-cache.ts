/**
 * The host chunk cache: tier 0 (memory, LRU bounded in bytes), tier 1 (local disk, SQLite
 * index), tier 2 (registries: mirrors, then the origin). One `ChunkCache` per process serves
 * every disk it opens, so two disks (or two readers of one disk) share chunks, and exactly one
 * fetch is in flight per chunk however many readers wait for it.
 */
import { LRUCache } from 'lru-cache';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { SlipwayConfig } from '../config.js';
import { SlipwayError } from '../errors.js';
import { OciLayoutStore } from '../oci/layout/layout-store.js';
import { Targets } from '../oci/open.js';
import type { Logger } from '../util/log.js';
import { PrioritySemaphore, type Priority, type Urgency } from '../util/semaphore.js';
import { WorkerPool, type Decoded } from '../workers/pool.js';
import { ChunkCodec } from '../disk/chunk-codec.js';

/**
 * The first chunks a process decodes are decoded on its own thread: a boot needs a handful, and
 * starting the worker threads (each loads zstd) costs more than decoding them. Past this many,
 * the threads take over.
 */
import { DiskTier, type DiskTierStats } from './disk-tier.js';
import { RemoteTier, type RemoteStats } from './remote-tier.js';
import { openLazyDisk, type LazyDisk, type OpenDiskOptions } from './lazy-disk.js';

/** Of each registry host's connections, how many only demand reads may use. */
const DEMAND_RESERVED_SLOTS = 2;

/** Decodes done inline before the worker threads are started (a small boot needs no threads). */
const INLINE_DECODES = 32;

/**
 * A chunk being fetched by a reader in this process: its bytes when they come (or the fetch's
 * error), and the urgency of the request that fetches it, which a more urgent reader that joins
 * raises (one `Urgency` per coalesced request, shared by its chunks).
 */
export interface InflightChunk {
  promise: Promise<Buffer>;
  urgency: Urgency;
}

export interface CacheStats {
  memory: { chunks: number; bytes: number; budgetBytes: number; hits: number };
  disk: DiskTierStats & { hits: number; corruptions: number };
  remote: RemoteStats;
  inflightJoins: number;
}

export interface ChunkCacheOptions {
  config: SlipwayConfig;
  logger: Logger;
  /** shared with the caller when given; otherwise the cache owns one */
  pool?: WorkerPool;
  targets?: Targets;
}

export class ChunkCache {
  readonly config: SlipwayConfig;
  readonly logger: Logger;
  private poolInstance: WorkerPool | undefined;
  private inlineCodec: ChunkCodec | undefined;
  private inlineDecodes = 0;
  private poolWarm: Promise<void> | undefined;
  private poolReady = false;
  readonly targets: Targets;
  readonly memory: LRUCache<string, Buffer>;
  readonly disk: DiskTier;
  readonly remote: RemoteTier;
  /** manifests, configs and indexes, by digest: disks already seen open without a registry */
  readonly meta: OciLayoutStore;
  /** one entry per chunk digest being fetched */
  readonly inflight = new Map<string, InflightChunk>();
  readonly counters = { memoryHits: 0, diskHits: 0, corruptions: 0, inflightJoins: 0 };
  private readonly hostLimits = new Map<string, PrioritySemaphore>();
  /** decodes handed to the threads at once (the rest wait here, by priority) */
  private decodeSlots: PrioritySemaphore | undefined;
  private readonly ownsPool: boolean;
  private readonly ownsTargets: boolean;
  private readonly openDisks = new Set<LazyDisk>();

  private constructor(opts: ChunkCacheOptions) {
    this.config = opts.config;
    this.logger = opts.logger;
    this.ownsPool = !opts.pool;
    this.ownsTargets = !opts.targets;
    this.poolInstance = opts.pool;
    this.targets = opts.targets ?? new Targets({ connections: opts.config.connectionsPerHost, requestTimeoutMs: opts.config.fetchDeadlineMs, plainHttpHosts: opts.config.plainHttpRegistries });
    mkdirSync(opts.config.cacheDir, { recursive: true });
    this.memory = new LRUCache<string, Buffer>({ maxSize: Math.max(1, opts.config.memoryBudgetBytes), sizeCalculation: (b) => Math.max(1, b.byteLength) });
    this.disk = new DiskTier({ cacheDir: opts.config.cacheDir, budgetBytes: opts.config.diskBudgetBytes, lowWatermark: opts.config.diskLowWatermark, logger: opts.logger });
    this.meta = new OciLayoutStore(join(opts.config.cacheDir, 'meta'));
    this.remote = new RemoteTier({
      decode: (stored, flags, length, digest, what, priority) => this.decode(stored, flags, length, digest, what, priority),
      logger: opts.logger,
      deadlineMs: opts.config.fetchDeadlineMs,
      hostLimit: (host) => this.hostLimit(host),
    });
  }

  /** Hashing and decompression threads, started on first use (a warm disk never needs them). */
  get pool(): WorkerPool {
    if (!this.poolInstance) {
      this.poolInstance = new WorkerPool();
      this.poolWarm = this.poolInstance.warm().then(() => {
        this.poolReady = true;
      });
      this.poolWarm.catch(() => undefined);
    }
    return this.poolInstance;
  }

  /**
   * Get ready for heavy work, as a long-running daemon does at start: start the worker threads and
   * wait until they answer, and make tier 1's chunk directories, so that the first cold disk waits
   * for neither.
   */
  async warmUp(): Promise<void> {
    void this.pool;
    this.disk.makePrefixDirs();
    await this.poolWarm;
  }

  /**
   * Decompress and verify a chunk. The worker threads start after the first INLINE_DECODES
   * decodes (or at `warmUp`); until they have booted (~100 ms of module loading each), decodes run
   * inline, so no chunk ever waits for threads.
   */
  async decode(stored: Buffer, flags: number, length: number, digest: Buffer, what: string, priority: Priority | Urgency = 'demand'): Promise<Decoded> {
    // a small cold boot needs a few chunks: decoded inline, without starting threads that would
    // take CPU from the booting VM; past that the threads start, and until they answer decodes
    // still run inline
    if (!this.poolReady && (this.poolInstance || ++this.inlineDecodes > INLINE_DECODES)) void this.pool;
    if (!this.poolReady) {
      this.inlineCodec ??= new ChunkCodec();
      return { data: this.inlineCodec.decode(stored, flags, length, digest, what), persisted: false };
    }
    const pool = this.pool;
    // the threads take decodes in turn, demand first: a guest's miss is never decoded after
    // speculation or prefetch that arrived before it (each thread has one decode and one waiting)
    this.decodeSlots ??= new PrioritySemaphore(pool.size * 2);
    const release = await this.decodeSlots.acquire(priority);
    // the worker also writes the chunk's tier-1 file, so the event loop does no file I/O for it
    const hex = digest.toString('hex');
    try {
      return await pool.decode(stored, flags, length, digest, what, { tmpPath: this.disk.tempPath(hex), finalPath: this.disk.chunkPath(hex) });
    } finally {
      release();
    }
  }

  static async open(opts: ChunkCacheOptions): Promise<ChunkCache> {
    const cache = new ChunkCache(opts);
    try {
      await cache.meta.init();
    } catch (err) {
      cache.disk.close();
      throw new SlipwayError('IO_ERROR', `cache directory ${opts.config.cacheDir}: ${(err as Error).message}`, { cause: err });
    }
    return cache;
  }

  /**
   * The bound on requests in flight to one registry host: `connectionsPerHost`, of which
   * DEMAND_RESERVED_SLOTS (fewer when the bound is small) are kept for demand reads, so that a
   * guest's miss never waits behind prefetch or speculation already on the wire.
   */
  hostLimit(host: string): PrioritySemaphore {
    let sem = this.hostLimits.get(host);
    if (!sem) {
      const limit = this.config.connectionsPerHost;
      sem = new PrioritySemaphore(limit, Math.min(DEMAND_RESERVED_SLOTS, limit - 1));
      this.hostLimits.set(host, sem);
    }
    return sem;
  }

  /** Open a disk by reference for lazy reads through the tiers. */
  async openDisk(refText: string, opts: OpenDiskOptions = {}): Promise<LazyDisk> {
    const disk = await openLazyDisk(this, refText, opts);
    this.openDisks.add(disk);
    disk.onClose(() => this.openDisks.delete(disk));
    return disk;
  }

  /** A chunk from tier 0 or tier 1, or undefined. Tier-1 hits are verified and promoted. */
  lookupLocal(digestHex: string, promote: boolean): { data: Buffer; tier: 0 | 1 } | undefined {
    const mem = this.memory.get(digestHex);
    if (mem) {
      this.counters.memoryHits++;
      return { data: mem, tier: 0 };
    }
    const got = this.disk.get(digestHex);
    if ('data' in got) {
      this.counters.diskHits++;
      if (promote) this.memory.set(digestHex, got.data);
      return { data: got.data, tier: 1 };
    }
    if (got.miss === 'corrupt') this.counters.corruptions++;
    return undefined;
  }

  /**
   * Keep a verified chunk in tier 1 (and tier 0 when it was asked for, not prefetched). A chunk
   * whose file a worker already wrote is only indexed; otherwise (decoded inline, or the worker's
   * write failed, a full disk included) it is written here, evicting to make room.
   */
  async store(digestHex: string, chunk: Decoded, intoMemory: boolean): Promise<void> {
    if (intoMemory) this.memory.set(digestHex, chunk.data);
    if (chunk.persisted) this.disk.adopt(digestHex, chunk.data.byteLength);
    else await this.disk.put(digestHex, chunk.data);
  }

  stats(): CacheStats {
    return {
      memory: { chunks: this.memory.size, bytes: this.memory.calculatedSize, budgetBytes: this.config.memoryBudgetBytes, hits: this.counters.memoryHits },
      disk: { ...this.disk.stats(), hits: this.counters.diskHits, corruptions: this.counters.corruptions },
      remote: { ...this.remote.stats },
      inflightJoins: this.counters.inflightJoins,
    };
  }

  /** Evict tier 1 down to `maxBytes` (default: the low watermark of the budget) and reconcile files and rows. */
  gc(maxBytes?: number): { evictedChunks: number; evictedBytes: number; strayFiles: number; lostRows: number } {
    const fsck = this.disk.fsck();
    const ev = this.disk.evictTo(maxBytes ?? Math.floor(this.config.diskBudgetBytes * this.config.diskLowWatermark));
    return { ...ev, ...fsck };
  }

  async close(): Promise<void> {
    for (const d of [...this.openDisks]) await d.close();
    this.disk.close();
    if (this.ownsTargets) await this.targets.close();
    if (this.ownsPool) await this.poolInstance?.close();
  }
}
