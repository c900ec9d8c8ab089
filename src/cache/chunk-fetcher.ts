/**
 * Single flight: every chunk the cache does not hold is fetched once, however many readers want it.
 * In this process, one in-flight entry per chunk digest (later readers wait on the first one's
 * fetch and raise it to their priority); between processes sharing the cache directory, a fetch
 * claim (fetch-claims.ts), which a reader that finds it waits on instead of fetching, and takes
 * over when its claimer fails, dies or does not deliver within the fetch deadline. The chunk
 * cache owns one `ChunkFetcher`, which owns its claims; nothing else touches either.
 */
import { chunkLength, HOLE, type ChunkIndex, type IndexEntry } from '../disk/format.js';
import { SlipwayError } from '../errors.js';
import type { Descriptor } from '../oci/types.js';
import { forEachBounded } from '../util/concurrency.js';
import type { Logger } from '../util/log.js';
import { Urgency, type Priority } from '../util/semaphore.js';
import type { Decoded } from '../workers/pool.js';
import type { ChunkWant, GetChunksOptions } from './cache-types.js';
import { FetchClaims } from './fetch-claims.js';
import { ParkedGuesses, type ParkedGuess } from './parked-guesses.js';
import { planRuns, type RemoteTier, type WantedChunk } from './remote-tier.js';

/**
 * A chunk being fetched by a reader in this process: its bytes when they come (or the fetch's
 * error), and the urgency of the request that fetches it, which a more urgent reader that joins
 * raises (one `Urgency` per coalesced request, shared by its chunks).
 */
interface InflightChunk {
  promise: Promise<Buffer>;
  /**
   * For a reader that wants the tier-1 file alone (GetChunksOptions.fileOnly): settles as soon as
   * the file is in place, which may be before it is durable and kept (RunDelivery.onVisible);
   * else with `promise`.
   */
  visible: Promise<Buffer>;
  urgency: Urgency;
  /** whether a reader other than the one that started the fetch waits for it */
  joined?: true;
  /** whether a reader wants the bytes (not only the tier-1 file, see GetChunksOptions.fileOnly) */
  needsBytes: boolean;
}

interface Deferred {
  promise: Promise<Buffer>;
  resolve: (b: Buffer) => void;
  reject: (e: unknown) => void;
}

/** A chunk a call fetches: what it is, its promise to settle, and its in-flight entry. */
interface Owned {
  wanted: WantedChunk;
  hex: string;
  d: Deferred;
  /** settles `flight.visible` */
  v: Deferred;
  flight: InflightChunk;
  /** fetched alongside the call's own chunks (a guess): kept in tier 1 only, never tier 0 */
  guess?: true;
}

/**
 * What an in-flight promise settles with when no bytes came back: a guess kept undecoded (nobody
 * waits for it), or a chunk decoded into its tier-1 file only. A reader that wants bytes and gets
 * this reads the file.
 */
const NO_BYTES = Buffer.alloc(0);

function deferred(): Deferred {
  let resolve!: (b: Buffer) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<Buffer>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // a fetch nobody else waits for must not be an unhandled rejection
  return { promise, resolve, reject };
}

/** Per index: the entries of each pack, and the first chunk that uses each entry (-1: none). */
interface PackMap {
  entriesByPack: Map<string, number[]>;
  firstChunkOfEntry: Int32Array;
}

export interface ChunkFetcherDeps {
  /** the cache directory, where fetch claims are made (`<cacheDir>/inflight`) */
  cacheDir: string;
  /** whether tier 1 holds a chunk */
  has: (hex: string) => boolean;
  remote: RemoteTier;
  logger: Logger;
  /** the fetch deadline (ms): how long a claim another process holds is waited on */
  deadlineMs: number;
  /** a chunk from tier 0 or tier 1 (counted in the cache's hits), or undefined */
  lookupLocal: (hex: string, promote: boolean) => { data: Buffer; tier: 0 | 1 } | undefined;
  /** keep a verified chunk in tier 1 (and tier 0 when `intoMemory`) */
  store: (hex: string, chunk: Decoded, intoMemory: boolean) => Promise<void>;
  /** `fileOnly`: the chunk's tier-1 file is wanted, not its bytes (see WorkerPool.decode); `onVisible`: see RemoteTierDeps.decode */
  decode: (stored: Buffer | readonly Buffer[], flags: number, length: number, digest: Buffer, what: string, priority: Priority | Urgency, fileOnly?: boolean, onVisible?: () => void) => Promise<Decoded>;
}

export class ChunkFetcher {
  /** one entry per chunk digest being fetched in this process */
  readonly #inflight = new Map<string, InflightChunk>();
  #joins = 0;
  readonly #packMaps = new WeakMap<ChunkIndex, PackMap>();
  readonly #deps: ChunkFetcherDeps;
  readonly #claims: FetchClaims;
  /** guesses fetched alongside demand misses and not yet asked for, undecoded */
  readonly parked = new ParkedGuesses();

  constructor(deps: ChunkFetcherDeps) {
    this.#deps = deps;
    this.#claims = new FetchClaims(deps.cacheDir);
  }

  /** Claims this fetcher makes stop being live (the cache is closing). */
  close(): void {
    this.#claims.close();
    this.parked.clear();
  }

  /** Look-ups that waited on a fetch another reader had started, since this cache opened. */
  get joins(): number {
    return this.#joins;
  }

  /** Chunks being fetched in this process now. */
  get size(): number {
    return this.#inflight.size;
  }

  /** Whether the chunk is being fetched in this process, or held as a guess: not worth asking for. */
  isFetching(hex: string): boolean {
    return this.#inflight.has(hex) || this.parked.has(hex);
  }

  /**
   * The chunks' bytes, each from the nearest tier. Chunks nobody is fetching yet are fetched
   * together: grouped by pack into coalesced Range requests, one in-flight promise per chunk. A
   * chunk already being fetched at a lower priority (a queued prefetch) is waited for, and its
   * fetch raised to `priority`. Look-ups, joins and the first requests happen before this returns.
   */
  getChunks(wanted: ChunkWant[], opts: GetChunksOptions): Promise<Buffer[]> {
    const results: (Buffer | undefined)[] = new Array(wanted.length);
    const waits: Promise<void>[] = [];
    const mine = new Map<number, Owned>();
    // tier 0 keeps bytes: a call that fills it wants them
    const fileOnly = opts.fileOnly === true && !opts.intoMemory;
    if (opts.guesses && (!fileOnly || opts.priority !== 'prefetch')) throw new SlipwayError('INVALID_ARGUMENT', 'guesses are fetched at prefetch priority, for tier 1 only');
    const guesses = opts.guesses === true;
    /** where a chunk's bytes go once they come (from its tier-1 file when only that was written) */
    const settle = (i: number, w: ChunkWant) => (b: Buffer): Promise<void> | void => {
      if (b !== NO_BYTES || fileOnly) {
        results[i] = b;
        return;
      }
      const local = this.#deps.lookupLocal(w.hex, opts.intoMemory);
      if (local) {
        results[i] = local.data;
        return;
      }
      // written and gone already (evicted under pressure): ask again, once
      return this.getChunks([w], opts).then(([again]) => {
        if (again === undefined || again === NO_BYTES) throw new SlipwayError('IO_ERROR', `${opts.what}: chunk ${w.chunk} was written to tier 1 and could not be read back`);
        results[i] = again;
      });
    };
    /** guesses this call found held and decodes itself */
    const unparked = new Map<number, Owned>();
    for (let i = 0; i < wanted.length; i++) {
      const w = wanted[i] as ChunkWant;
      const own = mine.get(w.entry) ?? unparked.get(w.entry);
      if (own) {
        // the same chunk twice in one call: its bytes as for the first (read back from its file
        // when only the file was written)
        waits.push((fileOnly ? own.flight.visible : own.d.promise).then(settle(i, w)));
        continue;
      }
      const local = this.#deps.lookupLocal(w.hex, opts.intoMemory);
      if (local) {
        results[i] = local.data;
        if (local.tier === 0) opts.tally.tier0Chunks++;
        else opts.tally.tier1Chunks++;
        continue;
      }
      const guess = this.parked.take(w.hex);
      if (guess) {
        // fetched by speculation, never decoded: decode it now (a fetch if it fails to verify)
        const o = this.#startFlight(w, opts.priority, !fileOnly);
        unparked.set(w.entry, o);
        waits.push((fileOnly ? o.flight.visible : o.d.promise).then(settle(i, w)));
        // another process sharing the cache may be fetching it meanwhile: its file, then
        if (this.#claims.claim(w.hex)) opts.track(this.#decodeGuess(opts, o, guess));
        else opts.track(this.#waitForOtherProcess(opts, o));
        opts.onGuessRead?.(w);
        continue;
      }
      opts.onMiss?.(w);
      const pending = this.#inflight.get(w.hex);
      if (pending) {
        pending.joined = true;
        pending.needsBytes ||= !fileOnly;
        opts.tally.inflightJoins++;
        this.#joins++;
        pending.urgency.raise(opts.priority);
        waits.push((fileOnly ? pending.visible : pending.promise).then(settle(i, w)));
        continue;
      }
      const o = this.#startFlight(w, opts.priority, !fileOnly);
      mine.set(w.entry, guesses ? { ...o, guess: true } : o);
      waits.push((fileOnly ? o.flight.visible : o.d.promise).then(settle(i, w)));
    }
    if (mine.size > 0 && opts.alongside) {
      // guesses ride along in the same requests, at prefetch priority; nobody here waits for them
      for (const w of opts.alongside([...mine.values()].map((o) => ({ entry: o.wanted.entry, chunk: o.wanted.chunk, hex: o.hex })))) {
        if (mine.has(w.entry) || this.#inflight.has(w.hex) || this.#deps.has(w.hex)) continue;
        mine.set(w.entry, { ...this.#startFlight(w, 'prefetch', false), guess: true });
      }
    }
    if (mine.size > 0) this.#fetchOwned(opts, [...mine.values()], false);
    return Promise.all(waits).then(() => results as Buffer[]);
  }

  /** Register a chunk as in flight in this process, at `priority`; its promise settles when it is in. */
  #startFlight(w: ChunkWant, priority: Priority, needsBytes: boolean): Owned {
    const d = deferred();
    const v = deferred();
    d.promise.then(v.resolve, v.reject);
    const flight: InflightChunk = { promise: d.promise, visible: v.promise, urgency: new Urgency(priority), needsBytes };
    this.#inflight.set(w.hex, flight);
    return { wanted: { entry: w.entry, chunk: w.chunk }, hex: w.hex, d, v, flight };
  }

  /**
   * Fetch chunks this call registered as in flight; settle each one's promise, whatever happens,
   * as soon as that chunk is verified (not when its whole run is). Each coalesced run's request
   * has one `Urgency`, raised with any of its chunks' own: whoever joins one chunk raises the whole
   * request, and that chunk's decode too (so it is decoded before its neighbours).
   */
  #fetchOwned(call: GetChunksOptions, all: Owned[], takeOver: boolean): void {
    const { has, remote, lookupLocal } = this.#deps;
    const claims = this.#claims;
    const { index, intoMemory } = call;
    // another process sharing the cache directory may be fetching some of these: wait for its files
    const owned = all.filter((o) => {
      if (takeOver) claims.takeOver(o.hex);
      else if (!claims.claim(o.hex)) {
        call.track(this.#waitForOtherProcess(call, o));
        return false;
      }
      // the claim may have been released by a process that has just stored the chunk
      const local = has(o.hex) ? lookupLocal(o.hex, intoMemory) : undefined;
      if (local) {
        claims.release(o.hex);
        this.#inflight.delete(o.hex);
        call.tally.tier1Chunks++;
        o.d.resolve(local.data);
        return false;
      }
      return true;
    });
    const byEntry = new Map(owned.map((o) => [o.wanted.entry, o] as const));
    const asked = new Map(owned.map((o, i) => [o.wanted.entry, i] as const));
    for (const run of planRuns(index, owned.map((o) => o.wanted), call.maxRunBytes, call.maxGapBytes)) {
      // a run's chunks are decoded in the order the caller asked for them (a profile's order)
      run.chunks.sort((a, b) => (asked.get(a.entry) as number) - (asked.get(b.entry) as number));
      // the request goes at the most urgent of its chunks' priorities, raised whenever one of them
      // is (a reader joining any chunk of it); each chunk keeps its own urgency for its decode. A
      // demand read of one chunk makes its neighbours in the run likely next: a background fill's
      // are then decoded at prefetch priority, as speculation's are
      const urgency = new Urgency('background');
      const own = run.chunks.map((w) => (byEntry.get(w.entry) as Owned).flight.urgency);
      for (const u of own) {
        urgency.raise(u.priority);
        u.onRaise(() => {
          urgency.raise(u.priority);
          if (u.priority === 'demand') for (const sibling of own) sibling.raise('prefetch');
        });
      }
      /** each chunk is kept and its readers answered as soon as it is verified, not when the run is */
      const settled: Promise<void>[] = [];
      const handed = new Set<number>();
      const deliver = (w: WantedChunk, chunk: Decoded): void => {
        const o = byEntry.get(w.entry) as Owned;
        handed.add(w.entry);
        settled.push(this.#keepAndAnswer(o, chunk, intoMemory && o.guess !== true, () => call.tally.tier2Chunks++));
      };
      const p = remote.fetchRun(index, run, call.sources, urgency, call.what, {
        onChunk: deliver,
        fileOnlyOf: (w) => {
          const o = byEntry.get(w.entry) as Owned;
          return !o.flight.needsBytes && !(intoMemory && o.guess !== true);
        },
        // the file is in place: its file readers are answered now, the rest once it is kept
        onVisible: (w) => (byEntry.get(w.entry) as Owned).v.resolve(NO_BYTES),
        // a guess nobody has joined is kept as it came, undecoded, until someone reads it
        park: (w, stored) => {
          const o = byEntry.get(w.entry) as Owned;
          if (o.guess !== true || o.flight.joined === true || o.flight.urgency.priority !== 'prefetch' || this.#inflight.get(o.hex) !== o.flight) return false;
          const e = index.entries[w.entry] as IndexEntry;
          this.parked.park(o.hex, { stored, flags: e.flags, length: chunkLength(index, w.chunk), digest: e.digest });
          handed.add(w.entry);
          this.#inflight.delete(o.hex);
          claims.release(o.hex);
          o.d.resolve(NO_BYTES);
          return true;
        },
        priorityOf: (w) => (byEntry.get(w.entry) as Owned).flight.urgency,
        onWholeBlob: (pack, blob) => this.#keepWholePack(call, pack, blob),
      }).then(() => Promise.all(settled), (err: unknown) => {
        // the chunks not handed over fail; those that were are already answered
        for (const w of run.chunks) {
          if (handed.has(w.entry)) continue;
          const o = byEntry.get(w.entry) as Owned;
          if (this.#inflight.get(o.hex) === o.flight) {
            this.#inflight.delete(o.hex);
            claims.release(o.hex);
          }
          o.d.reject(err);
        }
        return Promise.all(settled);
      });
      call.track(p);
    }
  }

  /**
   * Decode, verify and keep a guess a reader has asked for (taken out of `parked`). A guess whose
   * bytes do not verify (a source sent wrong bytes) is fetched again, as a miss is.
   */
  async #decodeGuess(call: GetChunksOptions, o: Owned, guess: ParkedGuess): Promise<void> {
    const { decode, logger } = this.#deps;
    let chunk: Decoded;
    try {
      // at the flight's urgency: a demand read joining a fill's decode of a guess raises it
      chunk = await decode(guess.stored, guess.flags, guess.length, guess.digest, `${call.what} chunk ${o.wanted.chunk} (a guess)`, o.flight.urgency, !o.flight.needsBytes && !call.intoMemory, () => o.v.resolve(NO_BYTES));
    } catch (err) {
      logger.warn('a guess fetched alongside a miss did not verify; fetching it again', { digest: o.hex, error: (err as Error).message });
      this.#fetchOwned(call, [o], true);
      return;
    }
    await this.#keepAndAnswer(o, chunk, call.intoMemory, () => call.tally.guessChunks++);
  }

  /**
   * A verified chunk this process fetched: kept in tier 1 (and tier 0 when `intoMemory`), its
   * in-flight entry and claim dropped, counted (`count`), and its readers answered. A chunk that
   * cannot be kept is still served: the read must not fail or hang for it.
   */
  async #keepAndAnswer(o: Owned, chunk: Decoded, intoMemory: boolean, count: () => void): Promise<void> {
    try {
      await this.#deps.store(o.hex, chunk, intoMemory);
    } catch (err) {
      this.#deps.logger.warn('could not keep a chunk in the cache; serving it uncached', { digest: o.hex, error: (err as Error).message });
    }
    // a run given up on (its deadline passed) may still deliver late: the entry and the claim are
    // then a newer fetch's, not ours to drop
    if (this.#inflight.get(o.hex) === o.flight) {
      this.#inflight.delete(o.hex);
      this.#claims.release(o.hex);
    }
    count();
    o.d.resolve(chunk.data.byteLength === chunk.length ? chunk.data : NO_BYTES);
  }

  /**
   * Another live claimer (see FetchClaims) claimed this chunk: poll tier 1 for its file.
   * If the claim goes away without a file (that process failed or died), fetch the chunk; if the
   * claim is still there after the fetch deadline, its claimer is not getting the chunk to us in
   * time (it may not be fetching at all): take the claim over and fetch regardless.
   */
  async #waitForOtherProcess(call: GetChunksOptions, o: Owned): Promise<void> {
    const { logger, lookupLocal, deadlineMs } = this.#deps;
    const deadline = Date.now() + deadlineMs;
    for (;;) {
      await new Promise((r) => setTimeout(r, 10));
      const local = lookupLocal(o.hex, call.intoMemory);
      if (local) {
        this.#inflight.delete(o.hex);
        call.tally.tier1Chunks++;
        o.d.resolve(local.data);
        return;
      }
      if (!this.#claims.claimedElsewhere(o.hex)) {
        this.#fetchOwned(call, [o], false);
        return;
      }
      if (Date.now() > deadline) {
        logger.warn('a fetch claimed by another process did not finish within the fetch deadline; fetching regardless', { digest: o.hex, deadlineMs });
        this.#fetchOwned(call, [o], true);
        return;
      }
    }
  }

  /** A server ignored Range and sent a whole pack (already verified): keep the disk's other chunks in it. */
  #keepWholePack(call: GetChunksOptions, pack: Descriptor, blob: Buffer): void {
    const { has, logger, decode, store } = this.#deps;
    const { index } = call;
    let maps = this.#packMaps.get(index);
    if (!maps) {
      const byPack = new Map<string, number[]>();
      index.entries.forEach((e, i) => {
        const digest = (index.packs[e.pack] as Descriptor).digest;
        const list = byPack.get(digest);
        if (list) list.push(i);
        else byPack.set(digest, [i]);
      });
      const first = new Int32Array(index.entries.length).fill(-1);
      for (let n = index.chunkCount - 1; n >= 0; n--) if (index.map[n] !== HOLE) first[index.map[n] as number] = n;
      maps = { entriesByPack: byPack, firstChunkOfEntry: first };
      this.#packMaps.set(index, maps);
    }
    const firstChunkOf = maps.firstChunkOfEntry;
    const work = (maps.entriesByPack.get(pack.digest) ?? []).filter((e) => {
      const hex = (index.entries[e] as IndexEntry).digest.toString('hex');
      return !has(hex) && !this.#inflight.has(hex) && (firstChunkOf[e] as number) >= 0;
    });
    call.track(forEachBounded(work, 4, async (e) => {
      const entry = index.entries[e] as IndexEntry;
      const chunk = await decode(blob.subarray(entry.offset, entry.offset + entry.storedLength), entry.flags, chunkLength(index, firstChunkOf[e] as number), entry.digest, `${call.what} pack ${pack.digest}`, 'background', true);
      await store(entry.digest.toString('hex'), chunk, false);
    }).catch((err: unknown) => logger.warn('could not keep a whole pack a server sent', { pack: pack.digest, error: (err as Error).message })));
  }
}
