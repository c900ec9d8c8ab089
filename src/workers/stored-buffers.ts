/**
 * Buffers for chunks' stored (compressed) bytes, recycled. A chunk's stored bytes are cut out of a
 * registry's answer into one of these (remote-tier.ts `cutChunks`), handed to a decode thread by
 * transfer, and transferred back when the thread is done with them (WorkerPool.decode), so that a
 * boot's hundreds of chunks do not each take fresh memory from the system: a fresh page costs a
 * fault (on this project's 2-core host about 2-10 µs per 4 KiB page, more than the copy into it).
 * Buffers come in power-of-two capacities; at most `maxBytes` of them are kept idle.
 */

/** Idle buffers kept at most, in bytes. */
const KEEP_BYTES = 32 << 20;
const MIN_CAPACITY = 64 << 10;

function capacityFor(length: number): number {
  let cap = MIN_CAPACITY;
  while (cap < length) cap *= 2;
  return cap;
}

export class StoredBuffers {
  readonly #idle = new Map<number, ArrayBuffer[]>();
  /** every buffer this recycler handed out (and may take back) */
  readonly #ours = new WeakSet<ArrayBuffer>();
  #idleBytes = 0;

  constructor(private readonly keepBytes = KEEP_BYTES) {}

  /** A buffer of `length` bytes (contents undefined), a view from offset 0 of a recyclable one. */
  take(length: number): Buffer {
    const cap = capacityFor(length);
    let ab = this.#idle.get(cap)?.pop();
    if (ab) this.#idleBytes -= cap;
    else {
      ab = Buffer.allocUnsafeSlow(cap).buffer as ArrayBuffer;
      this.#ours.add(ab);
    }
    return Buffer.from(ab, 0, length);
  }

  /** Whether `b` is a view of one of these buffers (it may be transferred, then given back). */
  owns(b: Uint8Array): boolean {
    return b.byteOffset === 0 && this.#ours.has(b.buffer as ArrayBuffer);
  }

  /** Take a buffer back (one that came back from a thread, or is no longer used). */
  give(ab: ArrayBuffer): void {
    const cap = ab.byteLength;
    if (cap !== capacityFor(cap) || this.#idleBytes + cap > this.keepBytes) return;
    this.#ours.add(ab);
    const list = this.#idle.get(cap);
    if (list) list.push(ab);
    else this.#idle.set(cap, [ab]);
    this.#idleBytes += cap;
  }
}

/** The process's recycler of stored-chunk buffers (one: buffers move between its users). */
export const storedBuffers = new StoredBuffers();
