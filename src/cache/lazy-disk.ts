/**
 * A lazily fetched disk: opened by `ChunkCache.openDisk` (open-disk.ts), it reads through the
 * cache's tiers: `read(offset, length)` asks the cache only for the chunks it touches. Besides
 * its reads, it plans what to fetch ahead (fetch-ahead.ts), prefetches its boot profile or the
 * whole disk, and records or refines its boot profile (profile-recorder.ts).
 */
import { SlipwayError } from '../errors.js';
import type { DiskArtifact } from '../disk/artifact.js';
import { chunkLength, HOLE, type IndexEntry } from '../disk/format.js';
import type { Target } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import type { ProgressFn } from '../util/progress.js';
import type { Priority } from '../util/semaphore.js';
import { forEachBounded } from '../util/concurrency.js';
import { pushBootProfile, writeLocalProfile, type BootProfile } from './boot-profile.js';
import type { ChunkWant, DiskChunkCache } from './cache-types.js';
import { DenseRegions, GuessYield, type GuessKind, planProfileRuns, PROFILE_GAP_BYTES, PROFILE_RUN_BYTES, ReadAhead, Speculation } from './fetch-ahead.js';
import { ProfileRecorder } from './profile-recorder.js';
import { MAX_COALESCE_GAP_BYTES, planRuns, type Source } from './remote-tier.js';

/**
 * Coalesced requests of speculation, and of a prefetch of chunks in a given order (but a boot
 * profile's own, see PROFILE_RUN_BYTES), stay small: a demand read that joins one waits for little.
 */
const SMALL_RUN_BYTES = 1 << 20;

export interface OpenDiskOptions {
  /** Pin the disk's chunks in tier 1 while it is open (default true). */
  pin?: boolean;
  /** Fetch the chunks of the disk's boot profile, if the registry has one, ahead of demand (default true). */
  useProfile?: boolean;
  /** Record the order in which chunks are first read, for `saveProfile()`. */
  recordProfile?: boolean;
  /**
   * Record only when there is no profile for this disk yet (in the registry, or kept on this
   * host); when there is one, note the chunks this boot still had to fetch outside it, so that
   * `saveProfile()` can store the profile refined with them (see `refineProfile`).
   */
  recordProfileIfMissing?: boolean;
  /**
   * On a demand miss, fetch the following chunks of the same pack at prefetch priority (default
   * false; the backend path, `serveDisk`, turns it on): what a disk's first boot needs without a
   * profile. See `Speculation` in fetch-ahead.ts.
   */
  speculate?: boolean;
  /** Once open, fill tier 1 with the rest of the disk at background priority (`--prefetch all`); stops when the disk closes. */
  fill?: boolean;
  /**
   * Open without waiting for the boot profile (its registry round trips): it is looked up, and
   * its prefetch started, once it arrives; `profileSettled` says when (a memory restore's RAM,
   * whose server starts meanwhile). Not with `recordProfile` or `recordProfileIfMissing`, which
   * must know before the first read.
   */
  profileInBackground?: boolean;
  /**
   * Keep the chunks reads fetch or find in tier 1 in tier 0 (memory) too (default true). The
   * backend path (`serveDisk`) turns it off: slipway-blk reads tier-1 files, so copies in memory
   * would only cost the daemon memory and garbage collection.
   */
  memoryTier?: boolean;
}

/** Where a saved boot profile went. */
export type SavedProfile = { where: 'registry'; descriptor: Descriptor; chunks: number } | { where: 'local'; path: string; chunks: number };

export interface DiskReadStats {
  /**
   * Byte-range reads through `read()` (`slipway read`, a snapshot's base) and their bytes. A
   * served disk's backend reads tier-1 files itself and asks this disk only for the chunks it
   * lacks (`readChunk`), which the tier counts below count: for a served disk these stay 0.
   */
  reads: number;
  bytesRead: number;
  /** chunk look-ups served by each tier */
  tier0Chunks: number;
  tier1Chunks: number;
  tier2Chunks: number;
  /** guesses speculation had fetched, decoded when first read (no request of their own) */
  guessChunks: number;
  zeroChunks: number;
  /** look-ups that waited on a fetch another reader had started */
  inflightJoins: number;
  /** chunks of the boot profile this disk opened with (0 without one) */
  profileChunks: number;
  /** chunks fetched by speculation (`speculate`) */
  speculatedChunks: number;
  /** speculated chunks the boot read, known when a recorded profile is saved (see ProfileRecorder.finish) */
  speculatedRead: number;
  /** of the chunks speculated, those a dense region asked for (fetch-ahead.ts), counted once per stored chunk */
  regionChunks: number;
  /** of those, the ones a demand read has taken since (held undecoded, or joined on the wire) */
  regionRead: number;
}

export class LazyDisk {
  readonly stats: DiskReadStats = { reads: 0, bytesRead: 0, tier0Chunks: 0, tier1Chunks: 0, tier2Chunks: 0, guessChunks: 0, zeroChunks: 0, inflightJoins: 0, profileChunks: 0, speculatedChunks: 0, speculatedRead: 0, regionChunks: 0, regionRead: 0 };
  readonly sizeBytes: number;
  readonly chunkSizeBytes: number;
  readonly digest: string;
  private readonly zero: Buffer;
  private readonly background = new Set<Promise<unknown>>();
  private readonly closeHooks: (() => void)[] = [];
  private pinHolder: string | undefined;
  private readonly readAheadPlan = new ReadAhead();
  private readonly speculationPlan = new Speculation();
  private readonly densePlan = new DenseRegions();
  /** what guessing has fetched and what of it was read; it stops guessing that does not pay */
  private readonly guessYield = new GuessYield();
  private readonly recorder = new ProfileRecorder();
  private hexByEntry: (string | undefined)[] = [];
  private closed = false;
  /** set when close starts: background fills stop taking new work */
  private stopping = false;
  private speculation = false;
  private memoryTier = true;
  /** the boot-profile prefetch started at open, if any: resolves with its time (ms) and chunks fetched, undefined if it failed */
  profilePrefetch: Promise<{ ms: number; fetchedChunks: number } | undefined> | undefined;
  /** Resolves once the boot profile has been looked up (and its prefetch started, if there is one); never rejects. */
  profileSettled: Promise<void> = Promise.resolve();
  /** Resolves with how many connections were opened ahead of this disk's first reads (0: none were needed); never rejects. */
  preconnected: Promise<number> = Promise.resolve(0);

  constructor(
    private readonly cache: DiskChunkCache,
    readonly reference: string,
    readonly artifact: DiskArtifact,
    readonly origin: Target,
    readonly sources: Source[],
    readonly resolvedOffline: boolean,
  ) {
    this.sizeBytes = artifact.config.sizeBytes;
    this.chunkSizeBytes = artifact.config.chunkSizeBytes;
    this.digest = artifact.manifestDescriptor.digest;
    this.zero = Buffer.alloc(this.chunkSizeBytes);
  }

  onClose(fn: () => void): void {
    this.closeHooks.push(fn);
  }

  pin(): void {
    this.pinHolder = this.cache.pin(`${this.reference}@${this.digest}`, this.chunkDigests());
  }

  /** Pin this disk's chunks for as long as process `pid` lives (its detached backend). */
  pinFor(pid: number, label: string): string {
    return this.cache.pin(`${label} ${this.reference}@${this.digest}`, this.chunkDigests(), pid);
  }

  private chunkDigests(): Set<string> {
    return new Set(this.artifact.index.entries.map((e) => e.digest.toString('hex')));
  }

  /** Record the order in which chunks are first read, for `saveProfile()`. */
  startProfile(): void {
    this.recorder.start();
  }

  /** Turn speculation on demand misses on or off (see OpenDiskOptions.speculate). */
  setSpeculation(on: boolean): void {
    this.speculation = on;
  }

  /** Keep what reads fetch in tier 0 too, or not (see OpenDiskOptions.memoryTier). */
  setMemoryTier(on: boolean): void {
    this.memoryTier = on;
  }

  /** The boot profile this disk opened with, if any, and where it came from. */
  get openedWithProfile(): { chunks: number; from: 'registry' | 'local' } | undefined {
    return this.recorder.openedWith;
  }

  /**
   * Note `profile` as the one this disk opened with. `refine`: also note the chunks this boot
   * fetches outside it, for `saveProfile()`.
   */
  useBaseProfile(profile: BootProfile, from: 'registry' | 'local', refine: boolean): void {
    this.recorder.useBase(profile, from, refine);
  }

  /** Whether `saveProfile()` has something to do: a profile being recorded, or a profile being refined, not yet saved. */
  get recordingProfile(): boolean {
    return this.recorder.recording;
  }

  /** Chunks this boot fetched outside the profile it opened with (when refining), in order. */
  profileExtras(): number[] {
    return this.recorder.extras();
  }

  /** Chunk numbers first read since `startProfile`, in order. */
  profile(): number[] {
    return this.recorder.order();
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.background.add(p);
    void p.finally(() => this.background.delete(p)).catch(() => undefined);
    return p;
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new SlipwayError('INVALID_ARGUMENT', `read of ${length} bytes at ${offset} is outside the ${this.sizeBytes}-byte disk ${this.reference}`);
    }
  }

  /** `length` bytes at `offset`, fetching only the chunks they lie in. */
  async read(offset: number, length: number, priority: Priority = 'demand'): Promise<Buffer> {
    this.checkRange(offset, length);
    if (length === 0) return Buffer.alloc(0);
    const cs = this.chunkSizeBytes;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    if (first === last && !this.recorder.recordsReads) {
      const fast = this.readWithinChunkLocally(first, offset - first * cs, length);
      if (fast) {
        this.stats.reads++;
        this.stats.bytesRead += length;
        return fast;
      }
    }
    // a sequential reader gets the next chunks fetched ahead, at prefetch priority
    const ahead = this.readAheadPlan.onRead(offset, length, last, this.artifact.index.chunkCount);
    if (ahead.length > 0) this.track(this.getChunks(ahead, 'prefetch', true).catch(() => undefined));
    const out = Buffer.allocUnsafe(length);
    const numbers = Array.from({ length: last - first + 1 }, (_, i) => first + i);
    const chunks = await this.getChunks(numbers, priority, true);
    for (let i = 0; i < numbers.length; i++) {
      const n = numbers[i] as number;
      const chunkStart = n * cs;
      const from = Math.max(offset, chunkStart);
      const to = Math.min(offset + length, chunkStart + cs);
      (chunks[i] as Buffer).copy(out, from - offset, from - chunkStart, to - chunkStart);
    }
    this.stats.reads++;
    this.stats.bytesRead += length;
    return out;
  }

  /**
   * A demand read had to go to a registry for chunk `n`: the chunks around it that `Speculation`
   * guesses, those of the same pack not yet local or in flight, counted (and noted for a profile
   * being recorded).
   */
  private guessesAround(n: number): number[] {
    if (this.stopping || this.guessYield.stopped) return [];
    const { index } = this.artifact;
    const e0 = index.map[n] as number;
    if (e0 === HOLE) return [];
    const pack = (index.entries[e0] as IndexEntry).pack;
    return this.noteGuesses(this.speculationPlan.onMiss(n, index.chunkCount).filter((m) => (index.entries[index.map[m] as number] as IndexEntry | undefined)?.pack === pack), 'window');
  }

  /**
   * Of chunks `candidates`, those worth asking for as guesses of `kind`: one per stored chunk,
   * neither a hole nor local nor in flight. Counted (and noted for a profile being recorded).
   */
  private noteGuesses(candidates: Iterable<number>, kind: GuessKind): number[] {
    const { index } = this.artifact;
    const wanted: number[] = [];
    const entries = new Set<number>();
    for (const m of candidates) {
      const e = index.map[m] as number;
      if (e === HOLE || entries.has(e) || this.cache.isLocalOrFetching(this.hexOf(e))) continue;
      entries.add(e);
      wanted.push(m);
      this.guessYield.noteGuessed(this.hexOf(e), kind);
    }
    this.stats.speculatedChunks += wanted.length;
    this.stats.regionChunks = this.guessYield.guessed.region;
    if (this.recordingProfile && wanted.length > 0) this.recorder.noteGuesses(wanted.map((m) => ({ hex: this.hexOf(index.map[m] as number), chunk: m })));
    return wanted;
  }

  /**
   * A demand read joined a fetch in flight for chunk `n` (its request is on the wire already):
   * fetch the guesses around it in a request of their own, at prefetch priority (under the
   * per-host bound that keeps connections for demand, so this never delays a demand miss).
   */
  private speculate(n: number): void {
    const wanted = this.guessesAround(n);
    if (wanted.length === 0) return;
    // small requests (as for a profile): a demand read that joins one waits for little; kept
    // undecoded until read, as the guesses that ride along with a miss are
    this.track(this.getChunks(wanted, 'prefetch', false, SMALL_RUN_BYTES, undefined, true, true).catch(() => undefined));
  }

  /**
   * A demand read had to go to a registry for chunk `n`: if the misses around it are dense
   * (`DenseRegions`), fetch the region's chunks not local or in flight as guesses, in requests
   * of their own at prefetch priority (under the per-host bound that keeps connections for
   * demand), kept undecoded until read; counted with speculation's.
   */
  private fillDenseRegion(n: number): void {
    if (this.stopping) return;
    const span = this.densePlan.onMiss(n, this.artifact.index.chunkCount);
    if (!span || this.guessYield.stopped) return;
    const wanted = this.noteGuesses(Array.from({ length: span.to - span.from + 1 }, (_, i) => span.from + i), 'region');
    if (wanted.length === 0) return;
    // the runs of a boot profile's prefetch: fewer requests (see DenseRegions in fetch-ahead.ts)
    this.track(this.getChunks(wanted, 'prefetch', false, PROFILE_RUN_BYTES, PROFILE_GAP_BYTES, true, true).catch(() => undefined));
  }

  /** A demand read asked for chunk `w`, which was not local; `taken`: from a guess (held, or on the wire). */
  private noteAsked(w: ChunkWant, taken: boolean): void {
    this.guessYield.noteAsked(w.hex, taken);
    this.stats.regionRead = this.guessYield.read.region;
  }

  /** Hex digest of an entry, computed once (it keys tier 0 and tier 1). */
  private hexOf(e: number): string {
    let hex = this.hexByEntry[e];
    if (hex === undefined) {
      hex = (this.artifact.index.entries[e] as IndexEntry).digest.toString('hex');
      this.hexByEntry[e] = hex;
    }
    return hex;
  }

  /** The fast path of a read inside one chunk that is local: a copy from memory, or one pread of a verified file. */
  private readWithinChunkLocally(n: number, at: number, length: number): Buffer | undefined {
    const e = this.artifact.index.map[n] as number;
    if (e === HOLE) {
      this.stats.zeroChunks++;
      return Buffer.alloc(length);
    }
    return this.cache.readLocal(this.hexOf(e), at, length, this.stats);
  }

  /**
   * One whole chunk's bytes (zeros for a hole), verified. `fileOnly`: the caller wants the chunk
   * in tier 1 and reads its file itself; the bytes returned may then be empty.
   */
  async readChunk(n: number, priority: Priority = 'demand', fileOnly = false): Promise<Buffer> {
    if (!Number.isSafeInteger(n) || n < 0 || n >= this.artifact.index.chunkCount) throw new SlipwayError('INVALID_ARGUMENT', `chunk ${n} is outside disk ${this.reference}`);
    const [data] = await this.getChunks([n], priority, true, undefined, undefined, fileOnly);
    return data === this.zero ? Buffer.alloc(chunkLength(this.artifact.index, n)) : (data as Buffer);
  }

  /**
   * The chunks' bytes: zeros for holes, the rest asked of the cache, which gets each from the
   * nearest tier with one fetch per chunk (see ChunkCache.getChunks). A demand read notes the
   * chunks it reads for a profile being recorded, the ones it had to fetch for a profile being
   * refined, and speculates around the last chunk it had to fetch, once its own fetch is asked for.
   * `guesses`: the chunks are speculation's, kept undecoded until read (GetChunksOptions.guesses).
   */
  async getChunks(numbers: number[], priority: Priority, intoMemory: boolean, maxRunBytes?: number, maxGapBytes?: number, fileOnly = false, guesses = false): Promise<Buffer[]> {
    if (this.closed) throw new SlipwayError('ABORTED', `disk ${this.reference} is closed`);
    const { index } = this.artifact;
    const results: Buffer[] = new Array(numbers.length);
    const wanted: ChunkWant[] = [];
    const at: number[] = [];
    for (let i = 0; i < numbers.length; i++) {
      const n = numbers[i] as number;
      const e = index.map[n] as number;
      if (e === HOLE) {
        results[i] = this.zero;
        this.stats.zeroChunks++;
        continue;
      }
      if (priority === 'demand') this.recorder.noteRead(n);
      wanted.push({ entry: e, chunk: n, hex: this.hexOf(e) });
      at.push(i);
    }
    if (wanted.length === 0) return results;
    /** the last chunk of this demand read that had to come from a registry (-1: none) */
    let missed = -1;
    /** whether the guesses rode along with this read's own fetch */
    let folded = false;
    const speculating = priority === 'demand' && this.speculation;
    const got = this.cache.getChunks(wanted, {
      index,
      sources: this.sources,
      what: `disk ${this.reference}`,
      priority,
      intoMemory: intoMemory && this.memoryTier,
      fileOnly,
      maxRunBytes,
      maxGapBytes,
      guesses,
      tally: this.stats,
      track: (p) => this.track(p),
      onMiss: priority !== 'demand' ? undefined : (w) => {
        this.recorder.noteFetched(w.chunk);
        // in flight now (before this read's own fetch starts): it joins a fetch, a guess's maybe
        this.noteAsked(w, this.cache.isLocalOrFetching(w.hex));
        // a chunk of the profile this disk opened with is on its way already: no speculation for it
        if (speculating && !this.recorder.inBase(w.chunk)) missed = Math.max(missed, w.chunk);
      },
      // a guess read here was fetched outside any profile this disk opened with: a profile being
      // refined gains it (one being recorded has it from noteRead already)
      onGuessRead: priority !== 'demand' ? undefined : (w) => {
        this.recorder.noteFetched(w.chunk);
        this.noteAsked(w, true);
      },
      // a miss this read fetches itself takes the guesses around it along in its own requests:
      // one request, not two, and the missed chunk is decoded first (it is demand, they prefetch)
      alongside: !speculating ? undefined : (fetching) => {
        const own = fetching.filter((w) => !this.recorder.inBase(w.chunk));
        if (own.length === 0) return [];
        folded = true;
        return this.guessesAround(Math.max(...own.map((w) => w.chunk))).map((m) => {
          const e = index.map[m] as number;
          return { entry: e, chunk: m, hex: this.hexOf(e) };
        });
      },
    });
    // a miss that only joined fetches in flight: the guesses go in requests of their own, after
    // the demand fetch (which holds its connection before speculation asks for one)
    if (missed >= 0 && !folded) this.speculate(missed);
    if (missed >= 0) this.fillDenseRegion(missed);
    const chunks = await got;
    for (let k = 0; k < chunks.length; k++) results[at[k] as number] = chunks[k] as Buffer;
    return results;
  }

  /**
   * Fill tier 1 with every chunk of the disk not already there (or of `chunks`, fetched in their
   * order), at low priority by default, a few coalesced requests at a time (`runBytes`, `gapBytes`:
   * bounds on a request of `chunks`, see planProfileRuns). Resolves when they are all local.
   */
  async prefetch(opts: { priority?: Priority; onProgress?: ProgressFn; concurrency?: number; chunks?: number[]; onRunDone?: (chunks: number[]) => void; runBytes?: number; gapBytes?: number } = {}): Promise<{ chunks: number; fetchedChunks: number }> {
    const { index } = this.artifact;
    const priority = opts.priority ?? 'background';
    const numbers = opts.chunks ?? [...index.map.keys()];
    const firstOfEntry = new Map<number, number>();
    for (const n of numbers) {
      const e = index.map[n];
      if (e === undefined || e === HOLE || firstOfEntry.has(e)) continue;
      if (this.cache.has((index.entries[e] as IndexEntry).digest.toString('hex'))) continue;
      firstOfEntry.set(e, n);
    }
    const wanted = [...firstOfEntry].map(([entry, chunk]) => ({ entry, chunk }));
    // chunks given are an order (a boot profile's): requests go in the order of their first chunk,
    // each one's chunks decoded in that order (see planProfileRuns; a demand read that joins a
    // queued request raises it); small ones unless asked for larger (the boot profile's prefetch)
    const runBytes = opts.chunks ? (opts.runBytes ?? SMALL_RUN_BYTES) : undefined;
    const gapBytes = opts.chunks ? (opts.gapBytes ?? MAX_COALESCE_GAP_BYTES) : undefined;
    const runs = opts.chunks ? planProfileRuns(index, wanted, runBytes, gapBytes) : planRuns(index, wanted);
    // the fetcher plans the same runs again from each run's chunks, with the same bounds
    const totalBytes = firstOfEntry.size * this.chunkSizeBytes;
    let doneBytes = 0;
    let fetchedChunks = 0;
    opts.onProgress?.({ op: 'prefetch', phase: 'start', doneBytes, totalBytes, chunks: firstOfEntry.size });
    await forEachBounded(runs, opts.concurrency ?? 4, async (run) => {
      // a disk being closed takes no new work (a whole-disk fill must not hold its close up)
      if (this.stopping) return;
      const numbersOfRun = run.chunks.map((w) => w.chunk);
      await this.getChunks(numbersOfRun, priority, priority !== 'background', runBytes, gapBytes, true);
      opts.onRunDone?.(numbersOfRun);
      fetchedChunks += run.chunks.length;
      doneBytes += run.chunks.length * this.chunkSizeBytes;
      opts.onProgress?.({ op: 'prefetch', phase: 'run', doneBytes, totalBytes });
    });
    opts.onProgress?.({ op: 'prefetch', phase: 'done', doneBytes: totalBytes, totalBytes });
    return { chunks: firstOfEntry.size, fetchedChunks };
  }

  /**
   * Start fetching a boot profile's chunks, ahead of demand, in profile order; returns the promise
   * of that work, which resolves with how long it took (ms) and how many chunks it fetched.
   */
  prefetchProfile(profile: BootProfile): Promise<{ ms: number; fetchedChunks: number } | undefined> {
    this.stats.profileChunks = profile.chunks.length;
    this.profilePrefetch = this.runProfilePrefetch(profile);
    return this.profilePrefetch;
  }

  private runProfilePrefetch(profile: BootProfile): Promise<{ ms: number; fetchedChunks: number } | undefined> {
    const t0 = performance.now();
    // chunks already local count as arrived
    this.recorder.arrived(profile.chunks.filter((n) => {
      const e = this.artifact.index.map[n] as number;
      return e === HOLE || this.cache.has(this.hexOf(e));
    }));
    return this.track(this.prefetch({ priority: 'prefetch', chunks: profile.chunks, concurrency: 64, runBytes: PROFILE_RUN_BYTES, gapBytes: PROFILE_GAP_BYTES, onRunDone: (chunks) => this.recorder.arrived(chunks) }).then(
      (r) => ({ ms: performance.now() - t0, fetchedChunks: r.fetchedChunks }),
      (err: unknown) => {
        this.cache.logger.warn('boot-profile prefetch failed; reads go on on demand', { disk: this.reference, error: (err as Error).message });
        return undefined;
      },
    ));
  }

  /**
   * Fill tier 1 with the rest of the disk at background priority while the VM runs (`--prefetch
   * all`), after its boot profile's chunks; stops taking new work when the disk closes.
   */
  fillInBackground(opts: { concurrency?: number } = {}): Promise<unknown> {
    return this.track(this.prefetch({ priority: 'background', ...opts }).catch((err: unknown) => {
      if (!this.stopping) this.cache.logger.warn('background fill of the disk failed; reads go on on demand', { disk: this.reference, error: (err as Error).message });
    }));
  }

  /**
   * Store the boot profile this boot recorded (or the one it opened with, refined by the chunks
   * this boot still had to fetch) next to the disk in its repository, as an artifact whose subject
   * is the disk; recording stops. A host that cannot push it (read-only credentials, a registry
   * refusing artifacts, an outage) keeps it in `<cacheDir>/profiles/` and says so once, in the log:
   * later boots on this host find it there and have nothing more to record. Resolves with where it
   * went, or undefined when there was nothing to store (nothing read, or a profile that already
   * covered the boot). Closing the disk waits for a save under way.
   */
  async saveProfile(): Promise<SavedProfile | undefined> {
    if (!this.recordingProfile) throw new SlipwayError('INVALID_ARGUMENT', `no boot profile is being recorded for ${this.reference}`);
    const { profile, guessesRead } = this.recorder.finish(this, (hex) => this.cache.chunkPath(hex));
    this.stats.speculatedRead = guessesRead;
    if (!profile) return undefined;
    // tracked: closing the disk waits for the profile to be stored
    return this.track(this.storeProfile(profile));
  }

  private async storeProfile(profile: BootProfile): Promise<SavedProfile> {
    const { cacheDir } = this.cache.config;
    if (this.recorder.openedWith?.from !== 'local') {
      try {
        return { where: 'registry', descriptor: await pushBootProfile(this.origin, this.artifact.manifestDescriptor, profile), chunks: profile.chunks.length };
      } catch (err) {
        const path = await writeLocalProfile(cacheDir, profile);
        this.cache.logger.warn('could not store the boot profile in the registry; keeping it on this host, where later boots of this disk use it', { disk: this.reference, digest: this.digest, path, error: (err as Error).message });
        return { where: 'local', path, chunks: profile.chunks.length };
      }
    }
    return { where: 'local', path: await writeLocalProfile(cacheDir, profile), chunks: profile.chunks.length };
  }

  /** Wait for background work (profile prefetch, keeping whole packs) to settle. */
  async settle(): Promise<void> {
    while (this.background.size > 0) await Promise.allSettled([...this.background]);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.stopping = true;
    await this.settle();
    this.closed = true;
    if (this.pinHolder) this.cache.unpin(this.pinHolder);
    for (const fn of this.closeHooks) fn();
  }
}
