/**
 * What a lazily read disk asks of the chunk cache (`DiskChunkCache`, which `ChunkCache`
 * implements), kept apart from both so that neither module needs the other's: the cache opens
 * disks, a disk asks the cache for chunks.
 */
import type { SlipwayConfig } from '../config.js';
import type { ChunkIndex } from '../disk/format.js';
import type { Logger } from '../util/log.js';
import type { Priority } from '../util/semaphore.js';
import type { Source } from './remote-tier.js';

/** A chunk a reader wants: its index entry, a chunk number that uses it (for its length), its hex digest. */
export interface ChunkWant {
  entry: number;
  chunk: number;
  hex: string;
}

/**
 * Where a reader's chunk look-ups were served from, counted by the cache as it serves them (a
 * LazyDisk passes its `stats`): tier 0, tier 1 (including chunks another reader or process was
 * already fetching into tier 1 when this one claimed them), tier 2 (fetched by this reader),
 * guesses (fetched earlier by speculation and held undecoded, decoded when first read: no request),
 * and look-ups that joined a fetch another reader in this process had started.
 */
export interface TierTally {
  tier0Chunks: number;
  tier1Chunks: number;
  tier2Chunks: number;
  guessChunks: number;
  inflightJoins: number;
}

export interface GetChunksOptions {
  /** the disk's index: packs, offsets and lengths of the wanted entries */
  index: ChunkIndex;
  /** where to fetch from: mirrors in order, then the origin */
  sources: Source[];
  /** names the disk in messages (`disk <reference>`) */
  what: string;
  /** of the requests this call makes, and to which it raises fetches it joins */
  priority: Priority;
  /** keep what is fetched or read from tier 1 in tier 0 too (demand reads; not prefetch) */
  intoMemory: boolean;
  /**
   * The caller needs each chunk in tier 1 (its file), not its bytes (a prefetch; the backend's
   * miss, which reads the file): chunks fetched for it are decoded straight into their files, and
   * its promise's buffers may be empty. Ignored with `intoMemory`.
   */
  fileOnly?: boolean;
  /** bound on one coalesced request (default: remote-tier's MAX_RUN_BYTES) */
  maxRunBytes?: number;
  /** wanted chunks this close in a pack share a request (default: remote-tier's MAX_COALESCE_GAP_BYTES) */
  maxGapBytes?: number;
  tally: TierTally;
  /**
   * Called at once, in order, for each wanted chunk that is not local (it is fetched, or a fetch
   * of it in flight is joined), before any request is made for it.
   */
  onMiss?: (want: ChunkWant) => void;
  /** Called at once for each wanted chunk found among the guesses held undecoded (no request is made for it). */
  onGuessRead?: (want: ChunkWant) => void;
  /**
   * Called once, after the look-ups, with the chunks this call is about to fetch itself (not
   * those it joins): more chunks to fetch in the same requests, at prefetch priority, which the
   * call does not wait for (speculation around a demand miss: one request instead of two, the
   * missed chunk decoded first). Chunks among them that are local or in flight are left out.
   */
  alongside?: (fetching: ChunkWant[]) => ChunkWant[];
  /**
   * The chunks this call fetches itself are guesses (speculation's in a request of its own, or a
   * dense region's: fetch-ahead.ts): kept as they come, undecoded, unless a reader joins one
   * first; their buffers are empty. Only with priority 'prefetch' and `fileOnly`.
   */
  guesses?: boolean;
  /** Background work of this call (fetches, waits on other processes, whole packs kept): a disk's close waits for it. */
  track: (work: Promise<unknown>) => void;
}

/** A holder of the disk's recorded tags: the digest each tag last resolved to (tier 1's SQLite index keeps them). */
export interface TagRecords {
  recordTag(ref: string, desc: { digest: string; mediaType: string; size: number }): void;
  lastSeenTag(ref: string): { digest: string; mediaType: string; size: number; seen: number } | undefined;
}

/** The chunk cache as a disk opened from it sees it. */
export interface DiskChunkCache {
  readonly config: SlipwayConfig;
  readonly logger: Logger;
  /**
   * The wanted chunks' bytes, in order, each from the nearest tier, with exactly one fetch per
   * chunk however many readers (in this process, or sharing the cache directory) want it. The
   * look-ups, the joins and the first requests are all made before this returns; the promise
   * settles when every chunk is in.
   */
  getChunks(wanted: ChunkWant[], opts: GetChunksOptions): Promise<Buffer[]>;
  /** `length` bytes at `offset` of a local chunk (tier 0, or a tier-1 file this process has verified), or undefined. */
  readLocal(hex: string, offset: number, length: number, tally: TierTally): Buffer | undefined;
  /** Whether tier 1 has the chunk. */
  has(hex: string): boolean;
  /** Whether the chunk is in tier 0 or tier 1, or being fetched in this process: not worth asking for. */
  isLocalOrFetching(hex: string): boolean;
  /** Where tier 1 keeps the chunk's file. */
  chunkPath(hex: string): string;
  /** Pin chunks in tier 1 for as long as process `pid` lives (this one by default) or until `unpin`; returns the holder. */
  pin(label: string, digestsHex: Iterable<string>, pid?: number): string;
  unpin(holder: string): void;
}
