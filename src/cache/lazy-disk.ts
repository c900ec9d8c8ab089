/**
 * A lazily fetched disk: opened by `ChunkCache.openDisk` (open-disk.ts, which resolves the
 * manifest, config and index once, cached by digest, so a disk already seen opens without its
 * registry), then `read(offset, length)` fetches only the chunks it touches, through the cache's tiers.
 */
import { statSync } from 'node:fs';
import { SlipwayError } from '../errors.js';
import type { DiskArtifact } from '../disk/artifact.js';
import { chunkLength, HOLE, type IndexEntry } from '../disk/format.js';
import type { Target } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import type { ProgressFn } from '../util/progress.js';
import type { Priority } from '../util/semaphore.js';
import { forEachBounded } from '../util/concurrency.js';
import type { ChunkWant, DiskChunkCache } from './cache-types.js';
import { planRuns, type Source } from './remote-tier.js';
import { pushBootProfile, refineProfile, writeLocalProfile, type BootProfile } from './boot-profile.js';

/** Chunks fetched ahead of a sequential reader: the window starts at 16 (8 MiB at the default chunk size) and doubles while reads stay sequential. */
const READAHEAD_MIN_CHUNKS = 16;
/** Coalesced requests of a boot-profile prefetch stay small so the first chunks come back first. */
const PROFILE_RUN_BYTES = 1 << 20;
const READAHEAD_MAX_CHUNKS = 128;
/**
 * Speculation on a demand miss (`speculate`): the chunks around the missed one in the same pack are
 * fetched at prefetch priority. A miss starts a stream: SPECULATE_BACK_CHUNKS before it and a
 * window of SPECULATE_MIN_CHUNKS after it (1 MiB at the default 512 KiB chunk); a miss at or just
 * past where a stream's speculation ended (the guest read on through it) doubles that stream's
 * window, up to SPECULATE_MAX_CHUNKS. Chosen on the Debian systemd boot trace (bench/storage-path.ts, 126 data
 * chunks read) by simulation, then measured: 55 misses in sequence instead of 126 for about 220
 * chunks speculated; (4, 16, 2 back) took 37 misses but speculated 360 chunks, 2.3x the bytes the
 * boot read, and was slower on a loaded 2-core host, where every chunk decoded costs as much CPU as
 * a miss costs waiting.
 */
const SPECULATE_MIN_CHUNKS = 2;
const SPECULATE_MAX_CHUNKS = 8;
/** A new stream also fetches this many chunks before the missed one (a boot reads a region in no set order). */
const SPECULATE_BACK_CHUNKS = 1;
/** Streams of speculation followed at once (a boot reads several files in turn); the oldest is forgotten. */
const SPECULATE_STREAMS = 8;

/** One run of speculation: chunks [from, until] have been asked for; `window` is its next step, in chunks. */
interface SpeculationStream {
  from: number;
  until: number;
  window: number;
}

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
   * profile. See SPECULATE_MIN_CHUNKS.
   */
  speculate?: boolean;
  /** Once open, fill tier 1 with the rest of the disk at background priority (`--prefetch all`); stops when the disk closes. */
  fill?: boolean;
}

/** Where a saved boot profile went. */
export type SavedProfile = { where: 'registry'; descriptor: Descriptor; chunks: number } | { where: 'local'; path: string; chunks: number };

export interface DiskReadStats {
  reads: number;
  bytesRead: number;
  /** chunk look-ups served by each tier */
  tier0Chunks: number;
  tier1Chunks: number;
  tier2Chunks: number;
  zeroChunks: number;
  /** look-ups that waited on a fetch another reader had started */
  inflightJoins: number;
  /** chunks of the boot profile this disk opened with (0 without one) */
  profileChunks: number;
  /** chunks fetched by speculation (`speculate`) */
  speculatedChunks: number;
  /** speculated chunks the boot read, known when a recorded profile is saved (see `guessesRead`) */
  speculatedRead: number;
}

export class LazyDisk {
  readonly stats: DiskReadStats = { reads: 0, bytesRead: 0, tier0Chunks: 0, tier1Chunks: 0, tier2Chunks: 0, zeroChunks: 0, inflightJoins: 0, profileChunks: 0, speculatedChunks: 0, speculatedRead: 0 };
  readonly sizeBytes: number;
  readonly chunkSizeBytes: number;
  readonly digest: string;
  private readonly zero: Buffer;
  private readonly background = new Set<Promise<unknown>>();
  private readonly closeHooks: (() => void)[] = [];
  private profileOrder: number[] | undefined;
  private profileSeen: Set<number> | undefined;
  private pinHolder: string | undefined;
  /** where the last read ended: a read starting there is sequential and triggers readahead */
  private lastReadEnd = -1;
  private readaheadUntil = 0;
  private readaheadWindow = READAHEAD_MIN_CHUNKS;
  private hexByEntry: (string | undefined)[] = [];
  private closed = false;
  /** chunks speculated while a profile is recorded: digest -> chunk number and the profile position then */
  private readonly guesses = new Map<string, { chunk: number; at: number }>();
  /** set when close starts: background fills stop taking new work */
  private stopping = false;
  private speculation = false;
  private streams: SpeculationStream[] = [];
  /** the profile this disk opened with, and where it came from */
  private baseProfile: { profile: BootProfile; from: 'registry' | 'local' } | undefined;
  /** refining `baseProfile`: chunk -> its position in the profile, which positions have arrived, and how many from the start have */
  private refine: { position: Map<number, number>; arrived: Uint8Array; arrivedPrefix: number; extra: { chunk: number; after: number }[] } | undefined;
  private baseChunks: Set<number> | undefined;
  /** the boot-profile prefetch started at open, if any: resolves with its time (ms) and chunks fetched, undefined if it failed */
  profilePrefetch: Promise<{ ms: number; fetchedChunks: number } | undefined> | undefined;
  /** whether saveProfile has run (recording stops then) */
  private profileStored = false;

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

  startProfile(): void {
    this.profileOrder = [];
    this.profileSeen = new Set();
  }

  private inBaseProfile(n: number): boolean {
    if (!this.baseProfile) return false;
    if (this.refine) return (this.refine.position.get(n) ?? -1) >= 0;
    this.baseChunks ??= new Set(this.baseProfile.profile.chunks);
    return this.baseChunks.has(n);
  }

  /** Turn speculation on demand misses on or off (see OpenDiskOptions.speculate). */
  setSpeculation(on: boolean): void {
    this.speculation = on;
  }

  /** The boot profile this disk opened with, if any, and where it came from. */
  get openedWithProfile(): { chunks: number; from: 'registry' | 'local' } | undefined {
    return this.baseProfile ? { chunks: this.baseProfile.profile.chunks.length, from: this.baseProfile.from } : undefined;
  }

  /**
   * Note `profile` as the one this disk opened with. `refine`: also note the chunks this boot
   * fetches outside it, for `saveProfile()`.
   */
  useBaseProfile(profile: BootProfile, from: 'registry' | 'local', refine: boolean): void {
    this.baseProfile = { profile, from };
    if (refine) {
      const position = new Map<number, number>();
      profile.chunks.forEach((n, i) => {
        if (!position.has(n)) position.set(n, i);
      });
      this.refine = { position, arrived: new Uint8Array(profile.chunks.length), arrivedPrefix: 0, extra: [] };
    }
  }

  /** Whether `saveProfile()` has something to do: a profile being recorded, or a profile being refined, not yet saved. */
  get recordingProfile(): boolean {
    return !this.profileStored && (this.profileOrder !== undefined || this.refine !== undefined);
  }

  /** Chunks this boot fetched outside the profile it opened with (when refining), in order. */
  profileExtras(): number[] {
    return (this.refine?.extra ?? []).map((x) => x.chunk);
  }

  /**
   * A chunk fetched from a registry for this boot (a demand miss, or speculation): recorded when
   * recording a profile, noted as an extra when refining one.
   */
  private noteFetched(n: number): void {
    if (this.profileStored) return;
    if (this.profileSeen && !this.profileSeen.has(n)) {
      this.profileSeen.add(n);
      this.profileOrder?.push(n);
    }
    const r = this.refine;
    if (r && !r.position.has(n)) {
      r.position.set(n, -1);
      r.extra.push({ chunk: n, after: r.arrivedPrefix });
    }
  }

  /** Profile chunks at these positions have arrived (when refining). */
  private profileArrived(chunks: number[]): void {
    const r = this.refine;
    if (!r) return;
    for (const n of chunks) {
      const at = r.position.get(n);
      if (at !== undefined && at >= 0) r.arrived[at] = 1;
    }
    while (r.arrivedPrefix < r.arrived.length && r.arrived[r.arrivedPrefix] === 1) r.arrivedPrefix++;
  }

  /** Chunk numbers first read since `startProfile`, in order. */
  profile(): number[] {
    return [...(this.profileOrder ?? [])];
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
    if (first === last && !this.profileSeen) {
      const fast = this.readWithinChunkLocally(first, offset - first * cs, length);
      if (fast) {
        this.stats.reads++;
        this.stats.bytesRead += length;
        return fast;
      }
    }
    if (offset === this.lastReadEnd) {
      this.readAhead(last + 1);
      this.readaheadWindow = Math.min(READAHEAD_MAX_CHUNKS, this.readaheadWindow * 2);
    } else this.readaheadWindow = READAHEAD_MIN_CHUNKS;
    this.lastReadEnd = offset + length;
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
   * Sequential readers (a guest reading a file, a copy) get the next chunks fetched before they
   * ask, at prefetch priority, so a demand read overtakes them.
   */
  private readAhead(from: number): void {
    const count = this.artifact.index.chunkCount;
    const start = Math.max(from, this.readaheadUntil);
    const end = Math.min(count, from + this.readaheadWindow);
    if (start >= end) return;
    this.readaheadUntil = end;
    const numbers = Array.from({ length: end - start }, (_, i) => start + i);
    this.track(this.getChunks(numbers, 'prefetch', true).catch(() => undefined));
  }

  /**
   * A demand read had to go to a registry for chunk `n` (a miss, or a join on a fetch in flight):
   * fetch the next chunks of the same pack, at prefetch priority (under the per-host bound that
   * keeps connections for demand, so this never delays a demand miss). Packs are in disk order,
   * so a pack's next chunks are the disk's next chunks, in the same blob, where one Range request
   * gets several. The window per stream grows while the guest keeps reading on through it.
   */
  private speculate(n: number): void {
    if (this.stopping) return;
    const { index } = this.artifact;
    const e0 = index.map[n] as number;
    if (e0 === HOLE) return;
    const pack = (index.entries[e0] as IndexEntry).pack;
    // a miss inside a stream's speculation or just past it: the guest reads on through it
    let stream = this.streams.find((s) => n >= s.from && n <= s.until + s.window);
    if (stream) {
      this.streams.splice(this.streams.indexOf(stream), 1);
      stream.window = Math.min(SPECULATE_MAX_CHUNKS, stream.window * 2);
    } else {
      stream = { from: n, until: n, window: SPECULATE_MIN_CHUNKS };
    }
    this.streams.unshift(stream);
    this.streams.length = Math.min(this.streams.length, SPECULATE_STREAMS);
    const fresh = stream.from === n && stream.until === n;
    const start = Math.max(n + 1, stream.until + 1);
    const end = Math.min(index.chunkCount, n + 1 + stream.window);
    stream.until = Math.max(stream.until, end - 1);
    const candidates: number[] = [];
    for (let m = start; m < end; m++) candidates.push(m);
    if (fresh) for (let m = Math.max(0, n - SPECULATE_BACK_CHUNKS); m < n; m++) candidates.push(m);
    const wanted: number[] = [];
    for (const m of candidates) {
      const e = index.map[m] as number;
      if (e === HOLE || (index.entries[e] as IndexEntry).pack !== pack) continue;
      const hex = this.hexOf(e);
      if (this.cache.isLocalOrFetching(hex)) continue;
      wanted.push(m);
    }
    if (wanted.length === 0) return;
    this.stats.speculatedChunks += wanted.length;
    // While a profile is recorded, each guess is noted with where the profile stood, so that
    // saveProfile can tell from its file's access time which ones the backend (which reads tier 1
    // without telling us) did read: the profile lists what the boot read, not what was guessed.
    if (this.recordingProfile) {
      const at = this.profileOrder ? this.profileOrder.length : (this.refine?.arrivedPrefix ?? 0);
      for (const m of wanted) this.guesses.set(this.hexOf(index.map[m] as number), { chunk: m, at });
    }
    // small requests (as for a profile): a demand read that joins one waits for little
    this.track(this.getChunks(wanted, 'prefetch', false, PROFILE_RUN_BYTES).catch(() => undefined));
  }

  /**
   * Which guesses (speculated chunks) the boot read: those whose tier-1 file was read after it was
   * written (access time after modification time: relatime, the default, and strictatime record
   * the first read after a write; chunk files are dated 2 s in the past when written, so a read in
   * the same clock tick as the write is seen too); with `at`, the profile position they were
   * guessed at. On a file system mounted noatime no read is seen: the profile then lacks those
   * chunks, and a later boot that misses them refines it.
   */
  private guessesRead(): { chunk: number; after: number }[] {
    const read: { chunk: number; after: number }[] = [];
    for (const [hex, g] of this.guesses) {
      try {
        const st = statSync(this.cache.chunkPath(hex));
        if (st.atimeMs > st.mtimeMs) read.push({ chunk: g.chunk, after: g.at });
      } catch {
        // evicted, or never stored: not known to be read
      }
    }
    return read;
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

  /** One whole chunk's bytes (zeros for a hole), verified. */
  async readChunk(n: number, priority: Priority = 'demand'): Promise<Buffer> {
    if (!Number.isSafeInteger(n) || n < 0 || n >= this.artifact.index.chunkCount) throw new SlipwayError('INVALID_ARGUMENT', `chunk ${n} is outside disk ${this.reference}`);
    const [data] = await this.getChunks([n], priority, true);
    return data === this.zero ? Buffer.alloc(chunkLength(this.artifact.index, n)) : (data as Buffer);
  }

  /**
   * The chunks' bytes: zeros for holes, the rest asked of the cache, which gets each from the
   * nearest tier with one fetch per chunk (see ChunkCache.getChunks). A demand read notes the
   * chunks it reads for a profile being recorded, the ones it had to fetch for a profile being
   * refined, and speculates around the last chunk it had to fetch, once its own fetch is asked for.
   */
  async getChunks(numbers: number[], priority: Priority, intoMemory: boolean, maxRunBytes?: number): Promise<Buffer[]> {
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
      if (this.profileSeen && priority === 'demand' && !this.profileStored && !this.profileSeen.has(n)) {
        this.profileSeen.add(n);
        this.profileOrder?.push(n);
      }
      wanted.push({ entry: e, chunk: n, hex: this.hexOf(e) });
      at.push(i);
    }
    if (wanted.length === 0) return results;
    /** the last chunk of this demand read that had to come from a registry (-1: none) */
    let missed = -1;
    const got = this.cache.getChunks(wanted, {
      index,
      sources: this.sources,
      what: `disk ${this.reference}`,
      priority,
      intoMemory,
      maxRunBytes,
      tally: this.stats,
      track: (p) => this.track(p),
      onMiss: priority !== 'demand' ? undefined : (w) => {
        this.noteFetched(w.chunk);
        // a chunk of the profile this disk opened with is on its way already: no speculation for it
        if (this.speculation && !this.inBaseProfile(w.chunk)) missed = Math.max(missed, w.chunk);
      },
    });
    // the demand fetch goes first (it holds its connection before speculation asks for one)
    if (missed >= 0) this.speculate(missed);
    const chunks = await got;
    for (let k = 0; k < chunks.length; k++) results[at[k] as number] = chunks[k] as Buffer;
    return results;
  }

  /**
   * Fill tier 1 with every chunk of the disk not already there, at low priority by default, a
   * few coalesced requests at a time. Resolves when the whole disk is local.
   */
  async prefetch(opts: { priority?: Priority; onProgress?: ProgressFn; concurrency?: number; chunks?: number[]; onRunDone?: (chunks: number[]) => void } = {}): Promise<{ chunks: number; fetchedChunks: number }> {
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
    let runs = planRuns(index, [...firstOfEntry].map(([entry, chunk]) => ({ entry, chunk })), opts.chunks ? PROFILE_RUN_BYTES : undefined);
    if (opts.chunks) {
      // a boot profile is an order: fetch in that order, in small runs, so that the chunks the
      // boot needs first arrive first (a demand read that joins a queued prefetch waits for it)
      const position = new Map(opts.chunks.map((n, i) => [n, i] as const));
      const key = (r: (typeof runs)[number]) => Math.min(...r.chunks.map((w) => position.get(w.chunk) ?? Number.MAX_SAFE_INTEGER));
      runs = runs.map((r) => ({ r, k: key(r) })).sort((a, b) => a.k - b.k).map((x) => x.r);
    }
    const totalBytes = firstOfEntry.size * this.chunkSizeBytes;
    let doneBytes = 0;
    let fetchedChunks = 0;
    opts.onProgress?.({ op: 'prefetch', phase: 'start', doneBytes, totalBytes, chunks: firstOfEntry.size });
    await forEachBounded(runs, opts.concurrency ?? 4, async (run) => {
      // a disk being closed takes no new work (a whole-disk fill must not hold its close up)
      if (this.stopping) return;
      const numbersOfRun = run.chunks.map((w) => w.chunk);
      await this.getChunks(numbersOfRun, priority, priority !== 'background');
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
    this.profileArrived(profile.chunks.filter((n) => {
      const e = this.artifact.index.map[n] as number;
      return e === HOLE || this.cache.has(this.hexOf(e));
    }));
    return this.track(this.prefetch({ priority: 'prefetch', chunks: profile.chunks, concurrency: 64, onRunDone: (chunks) => this.profileArrived(chunks) }).then(
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
  fillInBackground(): Promise<unknown> {
    return this.track(this.prefetch({ priority: 'background' }).catch((err: unknown) => {
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
    this.profileStored = true;
    // the guesses the backend read go in where they were guessed
    const read = this.guessesRead();
    this.stats.speculatedRead = read.length;
    let profile: BootProfile;
    if (this.profileOrder) {
      profile = refineProfile({ formatVersion: 1, disk: this.digest, chunkSizeBytes: this.chunkSizeBytes, chunks: this.profile() }, read);
    } else {
      const base = this.baseProfile as { profile: BootProfile };
      const extra = [...(this.refine?.extra ?? []), ...read.filter((g) => !base.profile.chunks.includes(g.chunk))];
      if (extra.length === 0) return undefined;
      profile = refineProfile(base.profile, extra);
    }
    if (profile.chunks.length === 0) return undefined;
    // tracked: closing the disk waits for the profile to be stored
    return this.track(this.storeProfile(profile));
  }

  private async storeProfile(profile: BootProfile): Promise<SavedProfile> {
    if (this.baseProfile?.from !== 'local') {
      try {
        return { where: 'registry', descriptor: await pushBootProfile(this.origin, this.artifact.manifestDescriptor, profile), chunks: profile.chunks.length };
      } catch (err) {
        const path = await writeLocalProfile(this.cache.config.cacheDir, profile);
        this.cache.logger.warn('could not store the boot profile in the registry; keeping it on this host, where later boots of this disk use it', { disk: this.reference, digest: this.digest, path, error: (err as Error).message });
        return { where: 'local', path, chunks: profile.chunks.length };
      }
    }
    return { where: 'local', path: await writeLocalProfile(this.cache.config.cacheDir, profile), chunks: profile.chunks.length };
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
