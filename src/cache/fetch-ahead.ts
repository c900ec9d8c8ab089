/**
 * What a lazy disk fetches before it is asked for: the next chunks of a sequential reader
 * (`ReadAhead`), and the chunks around a demand miss (`Speculation`, the backend path). Both only
 * plan chunk numbers; the disk leaves out holes and chunks already local or in flight, and
 * fetches the rest at prefetch priority. And how a boot profile's chunks are fetched
 * (`planProfileRuns`).
 */
import type { ChunkIndex } from '../disk/format.js';
import { planRuns, type Run, type WantedChunk } from './remote-tier.js';

/** Chunks fetched ahead of a sequential reader: the window starts at 16 (8 MiB at the default chunk size) and doubles while reads stay sequential. */
const READAHEAD_MIN_CHUNKS = 16;
const READAHEAD_MAX_CHUNKS = 128;

/**
 * Sequential readers (a guest reading a file, a copy) get the next chunks fetched before they
 * ask, at prefetch priority, so a demand read overtakes them.
 */
export class ReadAhead {
  /** where the last read ended: a read starting there is sequential and triggers readahead */
  #lastReadEnd = -1;
  #until = 0;
  #window = READAHEAD_MIN_CHUNKS;

  /**
   * Note a read of `length` bytes at `offset` whose last chunk is `last`, on a disk of
   * `chunkCount` chunks: the chunks to fetch ahead of it (none unless it is sequential).
   */
  onRead(offset: number, length: number, last: number, chunkCount: number): number[] {
    let ahead: number[] = [];
    if (offset === this.#lastReadEnd) {
      const from = last + 1;
      const start = Math.max(from, this.#until);
      const end = Math.min(chunkCount, from + this.#window);
      if (start < end) {
        this.#until = end;
        ahead = Array.from({ length: end - start }, (_, i) => start + i);
      }
      this.#window = Math.min(READAHEAD_MAX_CHUNKS, this.#window * 2);
    } else this.#window = READAHEAD_MIN_CHUNKS;
    this.#lastReadEnd = offset + length;
    return ahead;
  }
}

/**
 * Speculation on a demand miss: the chunks around the missed one in the same pack, fetched in the
 * miss's own request and kept undecoded until read (chunk-fetcher.ts). A miss starts a stream: a
 * window of SPECULATE_MIN_CHUNKS after it (4 MiB at the default 512 KiB chunk) and
 * SPECULATE_BACK_CHUNKS before it; a miss at or just past where a stream's speculation ended (the
 * guest read on through it) doubles that stream's window, up to SPECULATE_MAX_CHUNKS. Chosen on
 * the Debian systemd boot trace (bench/storage-path.ts, 124 data chunks read) by simulation
 * (bench/miss-model.ts), then measured side by side at 0 and 20 ms per request: alone, (4, 16,
 * none back) took about 63 misses for 1.6x the bytes the boot read and was about 8% faster at both
 * delays than (2, 8, 1 back: 67 misses, 1.4x) and (8, 8, none back: 61 misses, 1.7x); with dense
 * regions (below), (8, 16, none back) takes 42 misses for 1.9x in 62 requests, and (8, 20, 1 back)
 * 37 for 1.92x in 54 (measured: 0.22x the peer at 20 ms per request against 0.25x, and 0.62x at
 * 0 ms against 0.66x). The chunk behind comes first in the request's body, ahead of the missed
 * chunk: about 150 KB stored, a fraction of a millisecond on the wire.
 */
const SPECULATE_MIN_CHUNKS = 8;
const SPECULATE_MAX_CHUNKS = 20;
/** A new stream also fetches this many chunks before the missed one. */
const SPECULATE_BACK_CHUNKS = 1;
/** Streams of speculation followed at once (a boot reads several files in turn); the oldest is forgotten. */
const SPECULATE_STREAMS = 8;

/** One run of speculation: chunks [from, until] have been asked for; `window` is its next step, in chunks. */
interface SpeculationStream {
  from: number;
  until: number;
  window: number;
}

/**
 * The streams of speculation of one disk. Packs are in disk order, so a pack's next chunks are
 * the disk's next chunks, in the same blob, where one Range request gets several. The window per
 * stream grows while the guest keeps reading on through it.
 */
/** A speculation policy's windows, in chunks: the first after a miss, the most, and how many before a new stream's first miss. */
export interface SpeculationWindows {
  min: number;
  max: number;
  back: number;
}

/** The windows a disk speculates with (see above for how they were chosen). */
export const SPECULATION_WINDOWS: SpeculationWindows = { min: SPECULATE_MIN_CHUNKS, max: SPECULATE_MAX_CHUNKS, back: SPECULATE_BACK_CHUNKS };

export class Speculation {
  #streams: SpeculationStream[] = [];

  /** `windows`: another policy than the disks' own (bench/miss-model.ts compares them) */
  constructor(private readonly windows: SpeculationWindows = SPECULATION_WINDOWS) {}

  /**
   * A demand read had to go to a registry for chunk `n`: the chunks to guess, in order (after it,
   * then, for a new stream, before it), on a disk of `chunkCount` chunks. The caller keeps those
   * in `n`'s pack and not yet local or in flight.
   */
  onMiss(n: number, chunkCount: number): number[] {
    // a miss inside a stream's speculation or just past it: the guest reads on through it
    let stream = this.#streams.find((s) => n >= s.from && n <= s.until + s.window);
    if (stream) {
      this.#streams.splice(this.#streams.indexOf(stream), 1);
      stream.window = Math.min(this.windows.max, stream.window * 2);
    } else {
      stream = { from: n, until: n, window: this.windows.min };
    }
    this.#streams.unshift(stream);
    this.#streams.length = Math.min(this.#streams.length, SPECULATE_STREAMS);
    const fresh = stream.from === n && stream.until === n;
    const start = Math.max(n + 1, stream.until + 1);
    const end = Math.min(chunkCount, n + 1 + stream.window);
    stream.until = Math.max(stream.until, end - 1);
    const candidates: number[] = [];
    for (let m = start; m < end; m++) candidates.push(m);
    if (fresh) for (let m = Math.max(0, n - this.windows.back); m < n; m++) candidates.push(m);
    return candidates;
  }
}

/**
 * Dense regions: a boot reads the files of a package, a directory or a library set, and a file
 * system lays those out together, so where a first boot has missed several times close together
 * it will miss again. When a demand miss at chunk `n` has DENSE_MISSES - 1 earlier misses within
 * DENSE_REACH_CHUNKS of it (so those misses may lie up to twice the reach apart), the span from
 * the lowest of them to the highest, widened by DENSE_MARGIN_CHUNKS on each side, is fetched as
 * guesses: in requests of their own, at prefetch priority (never ahead of a demand miss), kept
 * undecoded until read (parked-guesses.ts). Any later miss with enough misses within its reach
 * plans its own span, which covers the earlier one's where they overlap. A chunk already among
 * the misses (a read that joined a fetch of it) is not a new miss. Chosen on the Debian systemd
 * boot trace (bench/storage-path.ts) with bench/miss-model.ts, together with the windows above:
 * without dense regions (4 doubling to 16) the boot missed 63 times for 1.64x the bytes it read;
 * with them and 8 doubling to 16, 42 misses for 1.88x (3 misses, a reach of 16 chunks, 4 chunks of
 * margin; 2 within 12 gave 40 for 1.99x, 3 within 24 gave 36 for 2.23x, past what speculation may
 * cost). Measured, at 20 ms per request the first boot went from 0.31x the peer to 0.25x, at 0 ms
 * from about 0.68x to about 0.65x (docs/benchmarks.md). A region's guesses go in requests of up to
 * PROFILE_RUN_BYTES with gaps of up to PROFILE_GAP_BYTES (fewer requests, each of which costs the
 * registry CPU, were 7% faster at 0 ms than 1 MiB ones without gaps; the price: a demand read that
 * joins one of them waits for the body up to its chunk, and bytes in a gap come again).
 */
const DENSE_MISSES = 3;
const DENSE_REACH_CHUNKS = 16;
const DENSE_MARGIN_CHUNKS = 4;
/** Misses remembered for it (a boot misses a few dozen times; older ones are forgotten first). */
const DENSE_HISTORY = 64;

/** A dense-region policy's bounds (bench/miss-model.ts compares them). */
export interface DenseRegionBounds {
  /** misses, the new one included, that make a region (0: never) */
  misses: number;
  /** how far from the new miss the others may lie, in chunks */
  reach: number;
  /** chunks added to the span on each side */
  margin: number;
}

/** The bounds a disk fills dense regions with (see above for how they were chosen); `misses: 0` turns it off. */
export const DENSE_REGION_BOUNDS: DenseRegionBounds = { misses: DENSE_MISSES, reach: DENSE_REACH_CHUNKS, margin: DENSE_MARGIN_CHUNKS };

/** Where the demand misses of one disk have been dense: the spans to fill as guesses. */
export class DenseRegions {
  #misses: number[] = [];

  constructor(private readonly bounds: DenseRegionBounds = DENSE_REGION_BOUNDS) {}

  /**
   * A demand read had to go to a registry for chunk `n` (of `chunkCount`): the chunks
   * [from, to] to fetch as guesses, or undefined when the misses near it are not dense yet, or
   * `n` is among the misses already. The caller leaves out holes and chunks local or in flight (a
   * span asked for before is mostly either by now).
   */
  onMiss(n: number, chunkCount: number): { from: number; to: number } | undefined {
    if (this.#misses.includes(n)) return undefined;
    this.#misses.push(n);
    if (this.#misses.length > DENSE_HISTORY) this.#misses.shift();
    if (this.bounds.misses <= 0) return undefined;
    const near = this.#misses.filter((m) => Math.abs(m - n) <= this.bounds.reach);
    if (near.length < this.bounds.misses) return undefined;
    return { from: Math.max(0, Math.min(...near) - this.bounds.margin), to: Math.min(chunkCount - 1, Math.max(...near) + this.bounds.margin) };
  }
}

/**
 * A reader that guesses do not help (random reads far apart in a large disk, a strided scan that
 * skips past each window) would pay their bytes for nothing: with speculation's windows, random
 * reads over a large disk fetch about 9 times the bytes they read. So once GUESS_PROBATION chunks
 * have been guessed (windows and regions together), a disk stops guessing while fewer than one in
 * GUESS_MIN_READ_INVERSE of them has been read. On the Debian boot 82 of the 291 chunks guessed were read (26 of the 66 a
 * region guessed), bench/storage-path.ts.
 */
export const GUESS_PROBATION = 128;
const GUESS_MIN_READ_INVERSE = 8;

/** What guessed a chunk: speculation's window after a miss, or a dense region. */
export type GuessKind = 'window' | 'region';

/**
 * The guesses of one disk, by chunk digest (a chunk stored once is guessed once, whatever number
 * of places it fills): how many were asked for and how many a demand read then took (from the
 * guesses held undecoded, or by joining its fetch on the wire), per kind; and whether guessing has
 * stopped (see GUESS_PROBATION).
 */
export class GuessYield {
  readonly #unread = new Map<string, GuessKind>();
  readonly guessed: Record<GuessKind, number> = { window: 0, region: 0 };
  readonly read: Record<GuessKind, number> = { window: 0, region: 0 };

  /** The chunk of digest `hex` was asked for as a guess (counted once while it stays unread). */
  noteGuessed(hex: string, kind: GuessKind): void {
    if (this.#unread.has(hex)) return;
    this.#unread.set(hex, kind);
    this.guessed[kind]++;
  }

  /**
   * A demand read asked for the chunk of digest `hex`, which was not local. `taken`: a guess of it
   * was there to take (held undecoded, or its fetch on the wire); otherwise its guess failed or was
   * dropped, and it is no longer counted as unread, nor as read.
   */
  noteAsked(hex: string, taken: boolean): void {
    const kind = this.#unread.get(hex);
    if (kind === undefined) return;
    this.#unread.delete(hex);
    if (taken) this.read[kind]++;
  }

  /** Whether guessing has stopped for this disk: GUESS_PROBATION guessed, too few of them read. */
  get stopped(): boolean {
    const guessed = this.guessed.window + this.guessed.region;
    return guessed >= GUESS_PROBATION && (this.read.window + this.read.region) * GUESS_MIN_READ_INVERSE < guessed;
  }
}

/**
 * A boot profile's chunks are fetched in requests of at most PROFILE_RUN_BYTES whose chunks are at
 * most PROFILE_GAP_BYTES apart in their pack (`planProfileRuns`). Every request costs the registry
 * and this host more than its bytes do (docker-registry spends about 7 ms of CPU on a blob GET,
 * whatever its length), so a few unwanted chunks in a gap are fetched rather than a second request
 * made: for the Debian boot's profile, 32 requests instead of the 54 that runs of 1 MiB with gaps of
 * 64 KiB make, for 1.26x the bytes (0.88x the bytes the boot reads); its replay (bench/storage-path.ts)
 * was 7-10% faster, at 0 and 20 ms per request.
 */
export const PROFILE_RUN_BYTES = 4 << 20;
export const PROFILE_GAP_BYTES = 512 << 10;

/**
 * The requests that fetch chunks in a given order (a boot profile's: first use): `wanted` in that
 * order, one per entry, coalesced into runs (by default of at most PROFILE_RUN_BYTES, with gaps of
 * at most PROFILE_GAP_BYTES), sent in the order of their first chunk, each run's chunks listed in
 * the given order: the order they are decoded in, so that the chunk the boot needs first in a run
 * is not decoded after its neighbours.
 */
export function planProfileRuns(index: ChunkIndex, wanted: WantedChunk[], maxRunBytes = PROFILE_RUN_BYTES, maxGapBytes = PROFILE_GAP_BYTES): Run[] {
  const position = new Map(wanted.map((w, i) => [w.entry, i] as const));
  const at = (w: WantedChunk): number => position.get(w.entry) as number;
  return planRuns(index, wanted, maxRunBytes, maxGapBytes)
    .map((run) => ({ ...run, chunks: [...run.chunks].sort((a, b) => at(a) - at(b)) }))
    .sort((a, b) => at(a.chunks[0] as WantedChunk) - at(b.chunks[0] as WantedChunk));
}
