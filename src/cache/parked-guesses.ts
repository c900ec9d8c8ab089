/**
 * Guesses kept as they came: the stored (compressed, unverified) bytes of chunks that speculation
 * fetched (alongside a demand miss, in a request of its own, or for a dense region: fetch-ahead.ts)
 * and nobody has asked for yet. A guess costs its bytes on the
 * wire and a copy, not a decode: most of a boot's guesses are never read (on the Debian boot of
 * bench/storage-path.ts, about two in three), and on a busy host every chunk decoded costs as much
 * CPU as a miss costs waiting. A guess is decoded, verified and written to tier 1 when a reader
 * first asks for it (ChunkFetcher), and dropped, oldest first, past a byte budget. In memory only:
 * a restart forgets them, which costs at most their fetch again.
 */

/**
 * A guess: what decoding it needs (the index entry's stored bytes, as views of the response's
 * pieces they came in, not copied; flags, length and digest).
 */
export interface ParkedGuess {
  stored: Buffer[];
  flags: number;
  length: number;
  digest: Buffer;
}

export interface ParkedStats {
  /** guesses held now, and their stored bytes */
  held: number;
  heldBytes: number;
  /** guesses kept undecoded since this cache opened, and those later read (and so decoded) */
  parked: number;
  taken: number;
  /** guesses dropped unread (past the budget) */
  dropped: number;
}

function storedBytes(g: ParkedGuess): number {
  return g.stored.reduce((n, p) => n + p.byteLength, 0);
}

/** Stored bytes of guesses kept at most (the oldest are dropped past it). */
export const PARKED_BUDGET_BYTES = 64 << 20;

export class ParkedGuesses {
  readonly #held = new Map<string, ParkedGuess>();
  #bytes = 0;
  readonly #stats = { parked: 0, taken: 0, dropped: 0 };

  constructor(private readonly budgetBytes = PARKED_BUDGET_BYTES) {}

  has(hex: string): boolean {
    return this.#held.has(hex);
  }

  /** Keep a guess's stored bytes under chunk digest `hex` (dropping the oldest past the budget). */
  park(hex: string, guess: ParkedGuess): void {
    if (this.#held.has(hex)) return;
    this.#held.set(hex, guess);
    this.#bytes += storedBytes(guess);
    this.#stats.parked++;
    for (const [old, g] of this.#held) {
      if (this.#bytes <= this.budgetBytes) break;
      this.#held.delete(old);
      this.#bytes -= storedBytes(g);
      this.#stats.dropped++;
    }
  }

  /** Take a guess out to decode it (undefined when none is held for `hex`). */
  take(hex: string): ParkedGuess | undefined {
    const g = this.#held.get(hex);
    if (!g) return undefined;
    this.#held.delete(hex);
    this.#bytes -= storedBytes(g);
    this.#stats.taken++;
    return g;
  }

  clear(): void {
    this.#held.clear();
    this.#bytes = 0;
  }

  stats(): ParkedStats {
    return { held: this.#held.size, heldBytes: this.#bytes, ...this.#stats };
  }
}
