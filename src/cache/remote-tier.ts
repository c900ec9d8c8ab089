/**
 * Tier 2: chunks from registries. Wanted chunks of one pack that lie close together are coalesced
 * into one Range request; sources (mirrors in order, then the origin) are tried in turn; every
 * chunk is decompressed into a buffer of exactly its length and checked against its sha256 in
 * the worker pool before it is returned. A source that sends wrong bytes or lacks the blob is
 * dropped for that request; transient failures are retried with backoff until a deadline.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { SlipwayError, isSlipwayError, isTransient } from '../errors.js';
import { chunkLength, type ChunkIndex, type IndexEntry } from '../disk/format.js';
import type { Target } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import type { Logger } from '../util/log.js';
import type { PrioritySemaphore, Priority, Urgency } from '../util/semaphore.js';
import { backoffDelayMs, type RetryPolicy } from '../util/retry.js';
import type { Decoded } from '../workers/pool.js';
import { storedBuffers } from '../workers/stored-buffers.js';

/** Two wanted chunks this close in a pack are fetched in one request (the gap is read and dropped). */
export const MAX_COALESCE_GAP_BYTES = 64 << 10;
/** Upper bound on one coalesced request. */
export const MAX_RUN_BYTES = 8 << 20;

export interface WantedChunk {
  /** entry ordinal in the index */
  entry: number;
  /** a chunk number using this entry (for its uncompressed length) */
  chunk: number;
}

export interface Run {
  pack: Descriptor;
  start: number;
  length: number;
  chunks: WantedChunk[];
}

/**
 * Group wanted chunks by pack, sort by offset, and merge neighbours (at most `maxGapBytes` apart;
 * the gap is fetched and dropped) into runs of at most `maxRunBytes`.
 */
export function planRuns(index: ChunkIndex, wanted: WantedChunk[], maxRunBytes = MAX_RUN_BYTES, maxGapBytes = MAX_COALESCE_GAP_BYTES): Run[] {
  const byPack = new Map<number, WantedChunk[]>();
  for (const w of wanted) {
    const e = index.entries[w.entry] as IndexEntry;
    const list = byPack.get(e.pack);
    if (list) list.push(w);
    else byPack.set(e.pack, [w]);
  }
  const runs: Run[] = [];
  for (const [pack, list] of byPack) {
    list.sort((a, b) => (index.entries[a.entry] as IndexEntry).offset - (index.entries[b.entry] as IndexEntry).offset);
    let run: Run | undefined;
    for (const w of list) {
      const e = index.entries[w.entry] as IndexEntry;
      const end = e.offset + e.storedLength;
      if (run && e.offset >= run.start && e.offset - (run.start + run.length) <= maxGapBytes && end - run.start <= maxRunBytes) {
        run.length = Math.max(run.length, end - run.start);
        run.chunks.push(w);
      } else {
        run = { pack: index.packs[pack] as Descriptor, start: e.offset, length: e.storedLength, chunks: [w] };
        runs.push(run);
      }
    }
  }
  return runs;
}

/**
 * Cut each wanted chunk's stored bytes out of a run's body as the body arrives (`pieces`, in
 * order, from the run's first byte), and hand each chunk over (`onStored`) as soon as its last
 * byte is in, as views of the pieces it lies in (no copy: a guess kept undecoded costs none; see
 * `gatherStored` for the copy a decode takes). A body is never concatenated. Returns the bytes of
 * the body consumed, at most the run's length (fewer: a short answer, whose incomplete chunks were
 * not handed over).
 */
export async function cutChunks(pieces: AsyncIterable<Buffer> | Iterable<Buffer>, index: ChunkIndex, run: Run, onStored: (w: WantedChunk, stored: Buffer[]) => void): Promise<number> {
  const order = [...run.chunks].sort((a, b) => (index.entries[a.entry] as IndexEntry).offset - (index.entries[b.entry] as IndexEntry).offset);
  const span = (i: number): [number, number] => {
    const e = index.entries[(order[i] as WantedChunk).entry] as IndexEntry;
    return [e.offset - run.start, e.offset - run.start + e.storedLength];
  };
  const parts: (Buffer[] | undefined)[] = new Array(order.length);
  /** the first chunk (in pack order) not yet handed over */
  let first = 0;
  let pos = 0;
  for await (const piece of pieces) {
    const p0 = pos;
    const p1 = Math.min(run.length, p0 + piece.byteLength);
    if (piece.byteLength === 0) continue;
    if (p1 <= p0) break; // more than was asked for: the rest is not ours
    pos = p1;
    for (let i = first; i < order.length; i++) {
      const [c0, c1] = span(i);
      if (c0 >= p1) break;
      if (c1 <= p0) continue; // handed over with an earlier piece
      const from = Math.max(c0, p0);
      const to = Math.min(c1, p1);
      const part = (parts[i] ??= []);
      part.push(piece.subarray(from - p0, to - p0));
      if (to === c1) {
        parts[i] = undefined;
        onStored(order[i] as WantedChunk, part);
      }
    }
    while (first < order.length && span(first)[1] <= pos) first++;
  }
  return pos;
}

/**
 * A chunk's stored bytes (views of the pieces `cutChunks` handed over) in one recycled buffer of
 * their own (workers/stored-buffers.ts), which a decode thread takes without another copy.
 */
export function gatherStored(pieces: readonly Buffer[]): Buffer {
  const out = storedBuffers.take(pieces.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of pieces) at += p.copy(out, at);
  return out;
}

export interface RemoteStats {
  requests: number;
  bytes: number;
  /** chunks fetched and verified */
  chunks: number;
  /** chunks fetched as guesses and kept undecoded (verified only if a reader asks for them) */
  guesses: number;
  retries: number;
  badSources: number;
  wholeBlobResponses: number;
}

export interface Source {
  target: Target;
  /** host used for the per-host concurrency bound */
  host: string;
}

export interface RemoteTierDeps {
  /** `priority`: the run's, read when the decode would wait for a thread (demand first) */
  /** `fileOnly`: the chunk's tier-1 file is wanted, not its bytes (see WorkerPool.decode) */
  /** `stored`: the chunk's stored bytes, whole or as the pieces of the answer they came in (gathered when a thread takes them) */
  /** `onVisible`: called once the file alone wanted (`fileOnly`) is in place, before it is durable, where tier 1 allows it */
  decode: (stored: Buffer | readonly Buffer[], flags: number, length: number, digest: Buffer, what: string, priority?: Priority | Urgency, fileOnly?: boolean, onVisible?: () => void) => Promise<Decoded>;
  logger: Logger;
  deadlineMs: number;
  hostLimit: (host: string) => PrioritySemaphore;
}

/**
 * Rounds over the sources: 100 ms doubling to 2 s, without jitter; bounded by the fetch deadline,
 * not by a count of attempts.
 */
const ROUND_BACKOFF: RetryPolicy = { maxAttempts: Number.POSITIVE_INFINITY, baseDelayMs: 100, maxDelayMs: 2000, jitter: false };

/**
 * Whether a failed attempt is worth another try of the same source: a transient error (errors.ts:
 * it could not be reached, it answered 5xx or 429, or it sent less than was asked for, SIZE_INVALID)
 * or one slipway did not classify. Only what is left, a complete answer that fails verification
 * (DIGEST_MISMATCH) or a source without the blob, counts against the source.
 */
function worthRetrying(err: unknown): boolean {
  return !isSlipwayError(err) || isTransient(err);
}

/** How the chunks of a run are handed over (`RemoteTier.fetchRun`). */
export interface RunDelivery {
  /** each chunk's verified bytes, as soon as that chunk is decoded (once per chunk, whatever retries it took) */
  onChunk?: (w: WantedChunk, chunk: Decoded) => void;
  /** whether only a chunk's tier-1 file is wanted, not its bytes (default: its bytes) */
  fileOnlyOf?: (w: WantedChunk) => boolean;
  /**
   * A chunk whose file alone is wanted has its file in place, not yet durable (RemoteTierDeps'
   * decode): its readers may be answered; `onChunk` follows once it is durable.
   */
  onVisible?: (w: WantedChunk) => void;
  /** the priority a chunk's decode waits at (default: the run's): a chunk a demand read waits for goes first */
  priorityOf?: (w: WantedChunk) => Priority | Urgency;
  /** a pack a server sent whole (Range ignored), already verified against its digest */
  onWholeBlob?: (pack: Descriptor, blob: Buffer) => void;
  /**
   * A chunk's stored bytes as they come, before any decode: true keeps them as they are (a guess
   * nobody waits for: whoever reads it later decodes and verifies it), and the chunk is then not
   * decoded (nor `onChunk`ed) here; false decodes it as usual.
   */
  park?: (w: WantedChunk, stored: Buffer[]) => boolean;
}

/** When a run's fetch deadline passes: unset until its first request is sent. */
interface WireClock {
  deadline: number | undefined;
}

export class RemoteTier {
  readonly stats: RemoteStats = { requests: 0, bytes: 0, chunks: 0, guesses: 0, retries: 0, badSources: 0, wholeBlobResponses: 0 };

  constructor(private readonly deps: RemoteTierDeps) {}

  /**
   * Fetch one run and return each wanted chunk's verified bytes (by entry ordinal); `opts.onChunk`
   * gets each one as soon as it is verified. `opts.onWholeBlob` receives a pack a server sent whole
   * (Range ignored), already verified against its digest.
   *
   * `priority` orders the run's requests in the per-host queue; an `Urgency` may be raised while
   * the run waits there (a demand read joining a queued prefetch). The fetch deadline
   * (`deadlineMs`) counts from the moment the run's first request is sent: time queued behind
   * other requests to the host before that is not time on the wire and does not count, however
   * long the queue. Throws REGISTRY_UNREACHABLE once the deadline has passed with transient
   * failures only, and the last source's error (DIGEST_MISMATCH, BLOB_UNKNOWN, ...) when every
   * source has failed for good.
   */
  async fetchRun(index: ChunkIndex, run: Run, sources: Source[], priority: Priority | Urgency, what: string, opts: RunDelivery = {}): Promise<Map<number, Decoded>> {
    const clock: WireClock = { deadline: undefined };
    /** chunks verified and handed over (`onChunk`) by an earlier attempt: a retry does not decode them again */
    const delivered = new Map<number, Decoded>();
    /** chunks kept undecoded (`opts.park`) by an earlier attempt: a retry leaves them be */
    const parked = new Set<number>();
    const bad = new Set<number>();
    let lastError: unknown;
    for (let round = 0; ; round++) {
      for (let s = 0; s < sources.length; s++) {
        if (bad.has(s)) continue;
        const source = sources[s] as Source;
        try {
          return await this.tryOnce(index, run, source, priority, what, clock, opts, delivered, parked);
        } catch (err) {
          lastError = err;
          if (!worthRetrying(err)) {
            bad.add(s);
            this.stats.badSources++;
            this.deps.logger.warn('chunk source failed; trying the next', { source: source.target.name, pack: run.pack.digest, code: (err as SlipwayError).code, error: (err as Error).message });
          }
        }
      }
      if (bad.size === sources.length) {
        throw new SlipwayError(isSlipwayError(lastError) ? lastError.code : 'REGISTRY_ERROR', `${what}: no source has pack ${run.pack.digest} bytes ${run.start}+${run.length} right (${sources.map((s) => s.target.name).join(', ')}): ${(lastError as Error)?.message}`, { cause: lastError });
      }
      const deadline = clock.deadline ?? Number.POSITIVE_INFINITY;
      if (Date.now() >= deadline) {
        throw new SlipwayError('REGISTRY_UNREACHABLE', `${what}: gave up after ${this.deps.deadlineMs} ms of retries (${sources.map((s) => s.target.name).join(', ')}): ${(lastError as Error)?.message}`, { cause: lastError });
      }
      this.stats.retries++;
      await sleep(Math.min(backoffDelayMs(ROUND_BACKOFF, round + 1), Math.max(0, deadline - Date.now())));
    }
  }

  /**
   * A request that has not answered by the deadline counts as failed (transient): a registry that
   * accepts connections and then hangs must not hold a read past `deadlineMs`. At the deadline the
   * request is aborted (`abort`): its connection is cut and the transport starts no retry, so
   * nothing of it arrives late (no chunk decoded and written after its read has failed).
   */
  private withinDeadline<T>(attempt: Promise<T>, deadline: number, abort: AbortController, source: Source, what: string): Promise<T> {
    attempt.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err = new SlipwayError('REGISTRY_UNREACHABLE', `${what}: ${source.target.name} did not answer within the ${this.deps.deadlineMs} ms fetch deadline`);
        abort.abort(err);
        reject(err);
      }, Math.max(0, deadline - Date.now()));
    });
    return Promise.race([attempt, expired]).finally(() => clearTimeout(timer));
  }

  private async tryOnce(index: ChunkIndex, run: Run, source: Source, priority: Priority | Urgency, what: string, clock: WireClock, opts: RunDelivery, delivered: Map<number, Decoded>, parked: Set<number>): Promise<Map<number, Decoded>> {
    const release = await this.deps.hostLimit(source.host).acquire(priority);
    // the deadline starts with the run's first request on the wire, not while it queued for a slot
    clock.deadline ??= Date.now() + this.deps.deadlineMs;
    if (Date.now() >= clock.deadline) {
      release();
      throw new SlipwayError('REGISTRY_UNREACHABLE', `${what}: the ${this.deps.deadlineMs} ms fetch deadline passed while a retry waited for a connection to ${source.host}`);
    }
    this.stats.requests++;
    let whole: Buffer | undefined;
    const onWholeBlob = (b: Buffer): void => {
      whole = b;
    };
    // each chunk is cut out of the body, decoded and handed over as soon as its own bytes are in,
    // not when the whole run is: a read waiting for one chunk of a long run waits for its bytes and
    // its decode only (each decode queues at its chunk's priority, so a chunk a demand read waits
    // for is decoded before its neighbours)
    const out = new Map<number, Decoded>(delivered);
    const decodes: Promise<void>[] = [];
    const decodeOne = async (w: WantedChunk, stored: Buffer[]): Promise<void> => {
      if (delivered.has(w.entry)) return;
      const fileOnly = opts.fileOnlyOf?.(w) === true;
      const onVisible = fileOnly && opts.onVisible ? () => opts.onVisible?.(w) : undefined;
      const chunk = await this.deps.decode(stored, (index.entries[w.entry] as IndexEntry).flags, chunkLength(index, w.chunk), (index.entries[w.entry] as IndexEntry).digest, `${what} chunk ${w.chunk} from ${source.target.name}`, opts.priorityOf?.(w) ?? priority, fileOnly, onVisible);
      out.set(w.entry, chunk);
      // a decode of a failed attempt may finish while a retry decodes the same chunk: one hand-over
      if (delivered.has(w.entry)) return;
      delivered.set(w.entry, chunk);
      this.stats.chunks++;
      opts.onChunk?.(w, chunk);
    };
    const abort = new AbortController();
    const receive = async (): Promise<number> => {
      const { target } = source;
      const range = { onWholeBlob, signal: abort.signal };
      const body = target.fetchBlobRangeStream
        ? await target.fetchBlobRangeStream(run.pack, run.start, run.length, range)
        : [await target.fetchBlobRange(run.pack, run.start, run.length, range)];
      return cutChunks(body, index, run, (w, stored) => {
        // (a store that ignores the signal may still answer: past the deadline, nothing is kept)
        if (abort.signal.aborted || delivered.has(w.entry) || parked.has(w.entry)) return;
        // (not out of a whole pack a server sent: its views would keep the pack in memory, and
        // onWholeBlob keeps the pack's chunks anyway)
        if (whole === undefined && opts.park?.(w, stored)) {
          parked.add(w.entry);
          this.stats.guesses++;
          return;
        }
        const p = decodeOne(w, stored);
        p.catch(() => undefined); // awaited below, unless the transfer failed first
        decodes.push(p);
      });
    };
    const request = receive();
    // the host slot is held for as long as the request is on the wire (cut at the deadline)
    request.then(release, release);
    const received = await this.withinDeadline(request, clock.deadline, abort, source, what);
    if (whole) {
      this.stats.wholeBlobResponses++;
      this.stats.bytes += (whole as Buffer).byteLength;
      opts.onWholeBlob?.(run.pack, whole);
    } else {
      this.stats.bytes += received;
    }
    await Promise.all(decodes);
    if (received < run.length) {
      // the chunks that came whole are kept (a retry asks again, and decodes only the others)
      throw new SlipwayError('SIZE_INVALID', `${what}: short read: ${received} of ${run.length} bytes at ${run.start} of pack ${run.pack.digest} from ${source.target.name}`);
    }
    return out;
  }
}
