/**
 * The metadata cache: the manifests, configs, chunk indexes, boot profiles and memory snapshots'
 * device state a host has fetched, kept by digest in `<cacheDir>/meta` (an OCI layout whose blobs
 * are written atomically but not fsynced, every read verified: disk-manifest.ts), so that a second
 * open of a disk, or a restore, reads them from disk and a registry outage finds the digest a tag
 * last had. Bounded by `metadataBudgetBytes`: a host that boots a new snapshot every few minutes
 * (CI runners) fetches new metadata for every one, about 300 KB of device state for a memory
 * snapshot, and without a bound the directory grows until the disk is full. Past the budget the
 * least recently used blobs go (a read of one marks it used: its modification time), down to the
 * low watermark the chunk tier uses; a blob gone is fetched again when it is next needed (a reader
 * that finds it gone between its look and its read does: disk-manifest.ts's `cachedCopy`), and
 * only an outage then finds it missing. Several processes may share the directory: each keeps its
 * own count of what it has seen, and an eviction walks the directory as it is.
 */
import { readdirSync, statSync, unlinkSync } from 'node:fs';
import { utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { parseDigest } from '../oci/digest.js';
import { OciLayoutStore } from '../oci/layout/layout-store.js';
import type { FetchedManifest } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';

/** A blob's file name: its sha256 in hex (anything else in the directory, a temporary file, is not a blob). */
const BLOB_NAME = /^[0-9a-f]{64}$/;

export interface MetadataUsage {
  blobs: number;
  bytes: number;
  budgetBytes: number;
}

export class MetadataCache extends OciLayoutStore {
  readonly #blobDir: string;
  /** blobs and bytes as this process last counted them (a walk) and has written or removed since */
  #blobs = 0;
  #bytes = 0;
  /** the last time a blob was marked used (ms since the epoch): each later mark is later still */
  #lastUse = 0;

  /**
   * `budgetBytes`: eviction starts above it; `lowWatermark` (0-1): the share of the budget it
   * stops below.
   */
  constructor(dir: string, private readonly budgetBytes: number, private readonly lowWatermark: number) {
    super(dir, { durable: false });
    this.#blobDir = join(dir, 'blobs', 'sha256');
  }

  /** Create or check the layout, count what it holds (a walk), and bring it under its budget. */
  override async init(): Promise<void> {
    await super.init();
    this.#count();
    if (this.#bytes > this.budgetBytes) this.evictTo(this.#lowBytes());
  }

  /** Blobs and bytes held, as this process knows them, and the budget. */
  usage(): MetadataUsage {
    return { blobs: this.#blobs, bytes: this.#bytes, budgetBytes: this.budgetBytes };
  }

  /**
   * Keep a blob (verified against `desc`: DIGEST_MISMATCH otherwise), or mark it used when it is
   * kept already (a tag resolved again to the same manifest); past the budget, evict (synchronous:
   * a walk of the directory, a few milliseconds for thousands of blobs).
   */
  override async pushBlob(desc: Descriptor, data: Buffer): Promise<void> {
    const had = await this.blobExists(desc.digest);
    await super.pushBlob(desc, data);
    // a new blob's time is set as a use's is: one clock orders them all
    await this.#touch(desc.digest);
    if (had) return;
    this.#blobs++;
    this.#bytes += data.byteLength;
    if (this.#bytes > this.budgetBytes) this.evictTo(this.#lowBytes());
  }

  /** A kept blob's bytes, verified (BLOB_UNKNOWN when it is not kept, or no longer), marked used. */
  override async fetchBlob(desc: Descriptor): Promise<Buffer> {
    const data = await super.fetchBlob(desc);
    await this.#touch(desc.digest);
    return data;
  }

  /** A kept manifest by digest (MANIFEST_UNKNOWN or BLOB_UNKNOWN when it is not kept), marked used. */
  override async fetchManifest(reference: string): Promise<FetchedManifest> {
    const fetched = await super.fetchManifest(reference);
    await this.#touch(fetched.descriptor.digest);
    return fetched;
  }

  /** Remove a blob (a torn copy), counted. */
  override async removeBlob(digest: string): Promise<void> {
    const st = statSync(join(this.#blobDir, parseDigest(digest).hex), { throwIfNoEntry: false });
    await super.removeBlob(digest);
    if (!st) return;
    this.#blobs--;
    this.#bytes -= st.size;
  }

  /**
   * Remove the least recently used blobs (oldest modification time first) until what is left is at
   * most `maxBytes`; returns what went. Counts the directory as it is first (another process may
   * have added or removed blobs). A blob that cannot be removed is skipped.
   */
  evictTo(maxBytes: number): { evictedBlobs: number; evictedBytes: number } {
    const blobs = this.#count();
    blobs.sort((a, b) => a.mtimeMs - b.mtimeMs);
    let evictedBlobs = 0;
    let evictedBytes = 0;
    for (const b of blobs) {
      if (this.#bytes <= maxBytes) break;
      try {
        unlinkSync(join(this.#blobDir, b.name));
        evictedBlobs++;
        evictedBytes += b.size;
      } catch (err) {
        // removed since the walk (another process evicting too): gone all the same; anything
        // else (not ours to remove) stays, and counts
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') continue;
      }
      this.#blobs--;
      this.#bytes -= b.size;
    }
    return { evictedBlobs, evictedBytes };
  }

  /** Bytes an eviction stops at. */
  #lowBytes(): number {
    return Math.floor(this.budgetBytes * this.lowWatermark);
  }

  /** Walk the blob directory: its blobs, and the counts set from them. */
  #count(): { name: string; size: number; mtimeMs: number }[] {
    const blobs: { name: string; size: number; mtimeMs: number }[] = [];
    let names: string[] = [];
    try {
      names = readdirSync(this.#blobDir);
    } catch {
      // not made yet
    }
    for (const name of names) {
      if (!BLOB_NAME.test(name)) continue;
      const st = statSync(join(this.#blobDir, name), { throwIfNoEntry: false });
      if (st?.isFile()) blobs.push({ name, size: st.size, mtimeMs: st.mtimeMs });
    }
    this.#blobs = blobs.length;
    this.#bytes = blobs.reduce((n, b) => n + b.size, 0);
    return blobs;
  }

  /**
   * Mark a blob used now (its modification time, by the wall clock), so that eviction takes it
   * last: each mark of this process a millisecond past the one before at least, so that two in
   * the same millisecond keep their order.
   */
  async #touch(digest: string): Promise<void> {
    this.#lastUse = Math.max(Date.now(), this.#lastUse + 1);
    const at = this.#lastUse / 1000;
    await utimes(join(this.#blobDir, parseDigest(digest).hex), at, at).catch(() => undefined);
  }
}
