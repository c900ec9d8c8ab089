/**
 * A disk's boot profile as one boot sees it (docs/cache.md, "Boot profiles"): the profile it
 * opened with, if any; the order in which it first read chunks, when it records one; the chunks
 * it still had to fetch outside the profile it opened with, when it refines that; and its guesses
 * (speculated chunks), of which those the backend read go into what is stored.
 */
import { statSync } from 'node:fs';
import { refineProfile, type BootProfile } from './boot-profile.js';

export class ProfileRecorder {
  #order: number[] | undefined;
  #seen: Set<number> | undefined;
  /** chunks speculated while a profile is recorded: digest -> chunk number and the profile position then */
  readonly #guesses = new Map<string, { chunk: number; at: number }>();
  /** the profile this disk opened with, and where it came from */
  #base: { profile: BootProfile; from: 'registry' | 'local' } | undefined;
  /** refining `#base`: chunk -> its position in the profile, which positions have arrived, and how many from the start have */
  #refine: { position: Map<number, number>; arrived: Uint8Array; arrivedPrefix: number; extra: { chunk: number; after: number }[] } | undefined;
  #baseChunks: Set<number> | undefined;
  /** whether the profile has been taken to be saved (recording stops then) */
  #stored = false;

  /** Record the order in which chunks are first read. */
  start(): void {
    this.#order = [];
    this.#seen = new Set();
  }

  /** Whether reads are recorded (since `start`, saved or not): every demand read then goes through `noteRead`. */
  get recordsReads(): boolean {
    return this.#seen !== undefined;
  }

  /** A demand read needs chunk `n` (a hole excepted): recorded the first time, until the profile is saved. */
  noteRead(n: number): void {
    if (this.#seen && !this.#stored && !this.#seen.has(n)) {
      this.#seen.add(n);
      this.#order?.push(n);
    }
  }

  /**
   * A chunk fetched from a registry for this boot (a demand miss, or a join on a fetch in
   * flight): recorded when recording a profile, noted as an extra when refining one.
   */
  noteFetched(n: number): void {
    if (this.#stored) return;
    if (this.#seen && !this.#seen.has(n)) {
      this.#seen.add(n);
      this.#order?.push(n);
    }
    const r = this.#refine;
    if (r && !r.position.has(n)) {
      r.position.set(n, -1);
      r.extra.push({ chunk: n, after: r.arrivedPrefix });
    }
  }

  /** Whether chunk `n` is in the profile this disk opened with (its prefetch brings it). */
  inBase(n: number): boolean {
    if (!this.#base) return false;
    if (this.#refine) return (this.#refine.position.get(n) ?? -1) >= 0;
    this.#baseChunks ??= new Set(this.#base.profile.chunks);
    return this.#baseChunks.has(n);
  }

  /**
   * Note `profile` as the one this disk opened with. `refine`: also note the chunks this boot
   * fetches outside it, for `finish()`.
   */
  useBase(profile: BootProfile, from: 'registry' | 'local', refine: boolean): void {
    this.#base = { profile, from };
    if (refine) {
      const position = new Map<number, number>();
      profile.chunks.forEach((n, i) => {
        if (!position.has(n)) position.set(n, i);
      });
      this.#refine = { position, arrived: new Uint8Array(profile.chunks.length), arrivedPrefix: 0, extra: [] };
    }
  }

  /** The boot profile this disk opened with, if any, and where it came from. */
  get openedWith(): { chunks: number; from: 'registry' | 'local' } | undefined {
    return this.#base ? { chunks: this.#base.profile.chunks.length, from: this.#base.from } : undefined;
  }

  /** Whether `finish()` has something to do: a profile being recorded, or a profile being refined, not yet saved. */
  get recording(): boolean {
    return !this.#stored && (this.#order !== undefined || this.#refine !== undefined);
  }

  /** Chunks this boot fetched outside the profile it opened with (when refining), in order. */
  extras(): number[] {
    return (this.#refine?.extra ?? []).map((x) => x.chunk);
  }

  /** Profile chunks at these positions have arrived (when refining). */
  arrived(chunks: number[]): void {
    const r = this.#refine;
    if (!r) return;
    for (const n of chunks) {
      const at = r.position.get(n);
      if (at !== undefined && at >= 0) r.arrived[at] = 1;
    }
    while (r.arrivedPrefix < r.arrived.length && r.arrived[r.arrivedPrefix] === 1) r.arrivedPrefix++;
  }

  /** Chunk numbers first read since `start`, in order. */
  order(): number[] {
    return [...(this.#order ?? [])];
  }

  /**
   * While a profile is recorded, each guess is noted with where the profile stood, so that
   * `finish` can tell from its file's access time which ones the backend (which reads tier 1
   * without telling us) did read: the profile lists what the boot read, not what was guessed.
   */
  noteGuesses(guesses: { hex: string; chunk: number }[]): void {
    if (!this.recording) return;
    const at = this.#order ? this.#order.length : (this.#refine?.arrivedPrefix ?? 0);
    for (const g of guesses) this.#guesses.set(g.hex, { chunk: g.chunk, at });
  }

  /**
   * Stop recording: the profile to store (this boot's, or the one it opened with refined by the
   * chunks this boot still had to fetch; undefined when there is nothing to store: nothing read,
   * or a profile that already covered the boot), and how many guesses the boot read.
   * `chunkPath` locates a chunk's tier-1 file.
   */
  finish(disk: { digest: string; chunkSizeBytes: number }, chunkPath: (hex: string) => string): { profile: BootProfile | undefined; guessesRead: number } {
    this.#stored = true;
    // the guesses the backend read go in where they were guessed; those read through this disk
    // (a guess kept undecoded is decoded by the read that asks for it) are in the order already
    const read = this.#guessesRead(chunkPath);
    const readHere = [...this.#guesses.values()].filter((g) => this.#seen?.has(g.chunk) === true).length;
    let profile: BootProfile;
    if (this.#order) {
      profile = refineProfile({ formatVersion: 1, disk: disk.digest, chunkSizeBytes: disk.chunkSizeBytes, chunks: this.order() }, read);
    } else {
      const base = this.#base as { profile: BootProfile };
      const extra = [...(this.#refine?.extra ?? []), ...read.filter((g) => !base.profile.chunks.includes(g.chunk))];
      if (extra.length === 0) return { profile: undefined, guessesRead: read.length + readHere };
      profile = refineProfile(base.profile, extra);
    }
    return { profile: profile.chunks.length === 0 ? undefined : profile, guessesRead: read.length + readHere };
  }

  /**
   * Which guesses (speculated chunks) the boot read: those whose tier-1 file was read after it was
   * written (access time after modification time: relatime, the default, and strictatime record
   * the first read after a write; chunk files are dated 2 s in the past when written, so a read in
   * the same clock tick as the write is seen too); with `after`, the profile position they were
   * guessed at. On a file system mounted noatime no read is seen: the profile then lacks those
   * chunks, and a later boot that misses them refines it.
   */
  #guessesRead(chunkPath: (hex: string) => string): { chunk: number; after: number }[] {
    const read: { chunk: number; after: number }[] = [];
    for (const [hex, g] of this.#guesses) {
      if (this.#seen?.has(g.chunk) === true) continue;
      try {
        const st = statSync(chunkPath(hex));
        if (st.atimeMs > st.mtimeMs) read.push({ chunk: g.chunk, after: g.at });
      } catch {
        // evicted, or never stored: not known to be read
      }
    }
    return read;
  }
}
