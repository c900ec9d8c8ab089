/**
 * The host chunk cache: tier 0 (memory, LRU bounded in bytes), tier 1 (local disk, SQLite
 * index), tier 2 (registries: mirrors, then the origin). One `ChunkCache` per process serves
 * every disk it opens, so two disks (or two readers of one disk) share chunks, and exactly one
 * fetch is in flight per chunk however many readers wait for it (its `ChunkFetcher`). Its tiers,
 * counters and in-flight fetches are its own: disks ask it for chunks (`getChunks`, `readLocal`).
 */
import { LRUCache } from 'lru-cache';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { SlipwayConfig } from '../config.js';
import { SlipwayError } from '../errors.js';
import { embeddedContent } from '../oci/digest.js';
import type { Descriptor } from '../oci/types.js';
import type { Target } from '../oci/store.js';
import type { BlobReader } from '../disk/artifact.js';
import { cachingBlobReader } from './disk-manifest.js';
import { MetadataCache, type MetadataUsage } from './metadata-cache.js';
import { Targets } from '../oci/open.js';
import type { Logger } from '../util/log.js';
import { PrioritySemaphore, type Priority, type Urgency } from '../util/semaphore.js';
import { WorkerPool, type Decoded } from '../workers/pool.js';
import { ChunkCodec } from '../disk/chunk-codec.js';
import type { ChunkWant, DiskChunkCache, GetChunksOptions, TierTally } from './cache-types.js';
import type { ParkedStats } from './parked-guesses.js';
import { ChunkFetcher } from './chunk-fetcher.js';
import { DiskTier, type DiskTierStats } from './disk-tier.js';
import type { LazyDisk, OpenDiskOptions } from './lazy-disk.js';
import { openLazyDisk } from './open-disk.js';
import { gatherStored, RemoteTier, type RemoteStats } from './remote-tier.js';

/** Of each registry host's connections, how many only demand reads may use. */
const DEMAND_RESERVED_SLOTS = 2;

/**
 * The first chunks a process decodes are decoded on its own thread: a boot needs a handful, and
 * starting the worker threads (each loads zstd) costs more than decoding them. Past this many,
 * the threads take over.
 */
const INLINE_DECODES = 32;

export interface CacheStats {
  memory: { chunks: number; bytes: number; budgetBytes: number; hits: number };
  disk: DiskTierStats & { hits: number; corruptions: number };
  remote: RemoteStats;
  inflightJoins: number;
  /** speculation's guesses kept undecoded until read (parked-guesses.ts) */
  guesses: ParkedStats;
  /** the metadata cache (metadata-cache.ts), as this process counts it */
  metadata: MetadataUsage;
}

export interface ChunkCacheOptions {
  config: SlipwayConfig;
  logger: Logger;
  /** shared with the caller when given; otherwise the cache owns one */
  pool?: WorkerPool;
  targets?: Targets;
}

export class ChunkCache implements DiskChunkCache {
  readonly config: SlipwayConfig;
  readonly logger: Logger;
  /** the stores references are opened on (shared with the caller when given) */
  readonly targets: Targets;
  #poolInstance: WorkerPool | undefined;
  #inlineCodec: ChunkCodec | undefined;
  #inlineDecodes = 0;
  #poolWarm: Promise<void> | undefined;
  #poolReady = false;
  readonly #memory: LRUCache<string, Buffer>;
  readonly #disk: DiskTier;
  readonly #remote: RemoteTier;
  /** manifests, configs and indexes, by digest: disks already seen open without a registry */
  readonly #meta: MetadataCache;
  readonly #fetcher: ChunkFetcher;
  readonly #counters = { memoryHits: 0, diskHits: 0, corruptions: 0 };
  readonly #hostLimits = new Map<string, PrioritySemaphore>();
  /** decodes handed to the threads at once (the rest wait here, by priority) */
  #decodeSlots: PrioritySemaphore | undefined;
  readonly #ownsPool: boolean;
  readonly #ownsTargets: boolean;
  readonly #openDisks = new Set<LazyDisk>();

  private constructor(opts: ChunkCacheOptions) {
    this.config = opts.config;
    this.logger = opts.logger;
    this.#ownsPool = !opts.pool;
    this.#ownsTargets = !opts.targets;
    this.#poolInstance = opts.pool;
    this.targets = opts.targets ?? new Targets({ connections: opts.config.connectionsPerHost, requestTimeoutMs: opts.config.fetchDeadlineMs, plainHttpHosts: opts.config.plainHttpRegistries });
    mkdirSync(opts.config.cacheDir, { recursive: true });
    this.#memory = new LRUCache<string, Buffer>({ maxSize: Math.max(1, opts.config.memoryBudgetBytes), sizeCalculation: (b) => Math.max(1, b.byteLength) });
    const disk = new DiskTier({ cacheDir: opts.config.cacheDir, budgetBytes: opts.config.diskBudgetBytes, lowWatermark: opts.config.diskLowWatermark, logger: opts.logger });
    this.#disk = disk;
    // manifests, configs and indexes: verified on every read, fetched again when torn by a crash
    this.#meta = new MetadataCache(join(opts.config.cacheDir, 'meta'), opts.config.metadataBudgetBytes, opts.config.diskLowWatermark);
    this.#remote = new RemoteTier({
      decode: (stored, flags, length, digest, what, priority, fileOnly, onVisible) => this.#decode(stored, flags, length, digest, what, priority, fileOnly, onVisible),
      logger: opts.logger,
      deadlineMs: opts.config.fetchDeadlineMs,
      hostLimit: (host) => this.hostLimit(host),
    });
    this.#fetcher = new ChunkFetcher({
      cacheDir: opts.config.cacheDir,
      has: (hex) => disk.has(hex),
      remote: this.#remote,
      logger: opts.logger,
      deadlineMs: opts.config.fetchDeadlineMs,
      lookupLocal: (hex, promote) => this.#lookupLocal(hex, promote),
      store: (hex, chunk, intoMemory) => this.#store(hex, chunk, intoMemory),
      decode: (stored, flags, length, digest, what, priority, fileOnly, onVisible) => this.#decode(stored, flags, length, digest, what, priority, fileOnly, onVisible),
    });
  }

  /** Hashing and decompression threads, started on first use (a warm disk never needs them). */
  get pool(): WorkerPool {
    if (!this.#poolInstance) {
      this.#poolInstance = new WorkerPool();
      this.#poolWarm = this.#poolInstance.warm().then(() => {
        this.#poolReady = true;
      });
      this.#poolWarm.catch(() => undefined);
    }
    return this.#poolInstance;
  }

  /** Tier 1's chunk directory: `<chunkDir>/<first two hex>/<hex>`, the files slipway-blk reads. */
  get chunkDir(): string {
    return this.#disk.chunkDir;
  }

  /**
   * Get ready for heavy work, as a long-running daemon does at start: start the worker threads and
   * wait until they answer, and make tier 1's chunk directories, so that the first cold disk waits
   * for neither.
   */
  async warmUp(): Promise<void> {
    void this.pool;
    this.#disk.makePrefixDirs();
    await this.#poolWarm;
  }

  /**
   * Decompress and verify a chunk. The worker threads start after the first INLINE_DECODES
   * decodes (or at `warmUp`); until they have booted (~100 ms of module loading each), decodes run
   * inline, so no chunk ever waits for threads. `fileOnly`: the caller needs the tier-1 file, not
   * the bytes (see WorkerPool.decode); inline decodes hand the bytes back regardless.
   */
  async #decode(stored: Buffer | readonly Buffer[], flags: number, length: number, digest: Buffer, what: string, priority: Priority | Urgency = 'demand', fileOnly = false, onVisible?: () => void): Promise<Decoded> {
    // a small cold boot needs a few chunks: decoded inline, without starting threads that would
    // take CPU from the booting VM; past that the threads start, and until they answer decodes
    // still run inline
    if (!this.#poolReady && (this.#poolInstance || ++this.#inlineDecodes > INLINE_DECODES)) void this.pool;
    if (!this.#poolReady) {
      this.#inlineCodec ??= new ChunkCodec();
      return { data: this.#inlineCodec.decode(Buffer.isBuffer(stored) ? stored : Buffer.concat(stored), flags, length, digest, what), length, persisted: false };
    }
    const pool = this.pool;
    // the threads take decodes in turn, demand first: a guest's miss is never decoded after
    // speculation or prefetch that arrived before it. A slot is held until the chunk's file is in
    // place, and a thread decodes its next chunk while the last one's file is made durable
    // (writeAtomicOverlapped): four a thread, so that a thread has a decode, one waiting, and two
    // files waiting on the disk
    this.#decodeSlots ??= new PrioritySemaphore(pool.size * 4);
    const release = await this.#decodeSlots.acquire(priority);
    // the worker also writes the chunk's tier-1 file, so the event loop does no file I/O for it
    const hex = digest.toString('hex');
    try {
      // the stored bytes are copied out of the answer's pieces only now, when a thread takes them:
      // into one of a few recycled buffers, not fresh memory for every chunk of a run waiting here
      // a file wanted alone may be read before it is durable, where tier 1 can make that safe
      // (DiskTier.visibleFirst) and has room for its row: its reader does not wait for the fdatasync
      const early = fileOnly && this.#disk.visibleFirst && !this.#disk.recentlyFull ? onVisible : undefined;
      return await pool.decode(Buffer.isBuffer(stored) ? stored : gatherStored(stored), flags, length, digest, what, { tmpPath: this.#disk.tempPath(hex), finalPath: this.#disk.chunkPath(hex), noReplace: this.#disk.linksWork }, fileOnly, early);
    } finally {
      release();
    }
  }

  static async open(opts: ChunkCacheOptions): Promise<ChunkCache> {
    const cache = new ChunkCache(opts);
    try {
      await cache.#meta.init();
    } catch (err) {
      cache.#fetcher.close();
      cache.#disk.close();
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
    let sem = this.#hostLimits.get(host);
    if (!sem) {
      const limit = this.config.connectionsPerHost;
      sem = new PrioritySemaphore(limit, Math.min(DEMAND_RESERVED_SLOTS, limit - 1));
      this.#hostLimits.set(host, sem);
    }
    return sem;
  }

  /** Open a disk by reference for lazy reads through the tiers. */
  async openDisk(refText: string, opts: OpenDiskOptions = {}): Promise<LazyDisk> {
    const disk = await openLazyDisk({ cache: this, targets: this.targets, meta: this.#meta, tags: this.#disk }, refText, opts);
    this.#openDisks.add(disk);
    disk.onClose(() => this.#openDisks.delete(disk));
    return disk;
  }

  /**
   * Blobs of `target` read through this cache's copy of content-addressed metadata (verified
   * against their descriptors either way): what a second restore of a memory snapshot on this host
   * reads from disk rather than the registry (its config, its device state).
   */
  blobReader(target: Target): BlobReader {
    return cachingBlobReader(this.#meta, [{ target, host: target.name }], target.name);
  }

  /**
   * Keep in the metadata cache the content these descriptors embed (`data`, image-spec 1.1), where
   * it is checked against each one's digest and size first: what does not match, or is not
   * embedded, is left to be fetched. A copy that cannot be written is only a later fetch.
   */
  async keepEmbedded(descs: Descriptor[]): Promise<void> {
    await Promise.all(descs.map(async (d) => {
      const content = embeddedContent(d);
      if (content) await this.#meta.pushBlob(d, content).catch(() => undefined);
    }));
  }

  getChunks(wanted: ChunkWant[], opts: GetChunksOptions): Promise<Buffer[]> {
    return this.#fetcher.getChunks(wanted, opts);
  }

  readLocal(hex: string, offset: number, length: number, tally: TierTally): Buffer | undefined {
    const mem = this.#memory.get(hex);
    if (mem) {
      tally.tier0Chunks++;
      this.#counters.memoryHits++;
      return Buffer.from(mem.subarray(offset, offset + length));
    }
    const part = this.#disk.readRange(hex, offset, length);
    if (part) {
      tally.tier1Chunks++;
      this.#counters.diskHits++;
    }
    return part;
  }

  has(hex: string): boolean {
    return this.#disk.has(hex);
  }

  isLocalOrFetching(hex: string): boolean {
    return this.#fetcher.isFetching(hex) || this.#memory.has(hex) || this.#disk.has(hex);
  }

  chunkPath(hex: string): string {
    return this.#disk.chunkPath(hex);
  }

  /** Keep a chunk verified elsewhere (a snapshot's, a backend's) in tier 1. False when there was no room to. */
  putChunk(hex: string, data: Buffer): Promise<boolean> {
    return this.#disk.put(hex, data);
  }

  pin(label: string, digestsHex: Iterable<string>, pid?: number): string {
    return this.#disk.pin(label, digestsHex, pid);
  }

  unpin(holder: string): void {
    this.#disk.unpin(holder);
  }

  /** Chunks being fetched by readers in this process now. */
  chunksInFlight(): number {
    return this.#fetcher.size;
  }

  /** A chunk from tier 0 or tier 1, or undefined. Tier-1 hits are verified and promoted. */
  #lookupLocal(digestHex: string, promote: boolean): { data: Buffer; tier: 0 | 1 } | undefined {
    const mem = this.#memory.get(digestHex);
    if (mem) {
      this.#counters.memoryHits++;
      return { data: mem, tier: 0 };
    }
    const got = this.#disk.get(digestHex);
    if ('data' in got) {
      this.#counters.diskHits++;
      if (promote) this.#memory.set(digestHex, got.data);
      return { data: got.data, tier: 1 };
    }
    if (got.miss === 'corrupt') this.#counters.corruptions++;
    return undefined;
  }

  /**
   * Keep a verified chunk in tier 1 (and tier 0 when it was asked for, not prefetched). A chunk
   * whose file a worker already wrote is only indexed; otherwise (decoded inline, or the worker's
   * write failed, a full disk included) it is written here, evicting to make room.
   */
  async #store(digestHex: string, chunk: Decoded, intoMemory: boolean): Promise<void> {
    if (intoMemory) this.#memory.set(digestHex, chunk.data);
    if (chunk.persisted) await this.#disk.adoptSoon(digestHex, chunk.length);
    else await this.#disk.put(digestHex, chunk.data);
  }

  stats(): CacheStats {
    return {
      memory: { chunks: this.#memory.size, bytes: this.#memory.calculatedSize, budgetBytes: this.config.memoryBudgetBytes, hits: this.#counters.memoryHits },
      disk: { ...this.#disk.stats(), hits: this.#counters.diskHits, corruptions: this.#counters.corruptions },
      remote: { ...this.#remote.stats },
      inflightJoins: this.#fetcher.joins,
      guesses: this.#fetcher.parked.stats(),
      metadata: this.#meta.usage(),
    };
  }

  /**
   * Evict tier 1 down to `maxBytes` (default: the low watermark of the budget) and reconcile files
   * and rows; and the metadata cache down to the low watermark of its own budget.
   */
  gc(maxBytes?: number): { evictedChunks: number; evictedBytes: number; strayFiles: number; lostRows: number; evictedMetadataBlobs: number; evictedMetadataBytes: number } {
    const fsck = this.#disk.fsck();
    const ev = this.#disk.evictTo(maxBytes ?? Math.floor(this.config.diskBudgetBytes * this.config.diskLowWatermark));
    const meta = this.#meta.evictTo(Math.floor(this.config.metadataBudgetBytes * this.config.diskLowWatermark));
    return { ...ev, ...fsck, evictedMetadataBlobs: meta.evictedBlobs, evictedMetadataBytes: meta.evictedBytes };
  }

  async close(): Promise<void> {
    for (const d of [...this.#openDisks]) await d.close();
    this.#fetcher.close();
    this.#disk.close();
    if (this.#ownsTargets) await this.targets.close();
    if (this.#ownsPool) await this.#poolInstance?.close();
  }
}
