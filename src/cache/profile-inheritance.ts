/**
 * A new version of a disk inherits the boot profile of the version it was deduplicated against
 * (docs/cache.md, "Boot profiles"). A fleet rebuilds its images (a nightly CI runner, a patched
 * sandbox) far more often than it makes new ones; a rebuild pushed under a new tag has never been
 * booted, but its boot reads the same places of the same file system as the last version's did.
 * At push, the new disk gets a profile derived from the best-matching profiled disk among those
 * the push deduplicated against (a snapshot's base, the tag's previous disk, then the repository's
 * newest-looking tags); its first boot then prefetches that profile and refines it with what it
 * still had to fetch (`refineProfile`), as any boot with a profile does.
 *
 * "Best-matching": the largest fraction of the parent profile's chunks (those that are data in the
 * new disk) whose content at the same chunk number is unchanged. A candidate where fewer than half
 * are unchanged is not used: the file system was laid out anew (a rebuild from scratch that dedup
 * barely matched), and the profile would prefetch the wrong places.
 */
import { isSlipwayError, isTransient } from '../errors.js';
import type { DiskArtifact } from '../disk/artifact.js';
import { HOLE, type ChunkIndex } from '../disk/format.js';
import type { Target } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import { forEachBounded } from '../util/concurrency.js';
import { checkBootProfile, fetchBootProfile, pushBootProfile, type BootProfile } from './boot-profile.js';

/** What an inheritance did: the profile pushed for the new disk, and where it came from. */
export interface InheritedProfile {
  /** the disk manifest digest the profile was inherited from */
  from: string;
  /** chunks in the new disk's profile */
  chunks: number;
  /** of those chunks, how many hold the same content as in the parent */
  unchangedChunks: number;
  descriptor: Descriptor;
}

/**
 * A parent profile's distinct chunks that are data in the new disk (`index`), and how many of
 * those hold the same content there as in the parent.
 */
function overlap(profile: BootProfile, parent: ChunkIndex, index: ChunkIndex): { chunks: number[]; unchanged: number } {
  const chunks: number[] = [];
  let unchanged = 0;
  for (const n of new Set(profile.chunks)) {
    if (n >= index.chunkCount || index.map[n] === HOLE) continue;
    chunks.push(n);
    const a = parent.map[n] as number;
    if (a !== HOLE && (parent.entries[a]?.digest as Buffer).equals(index.entries[index.map[n] as number]?.digest as Buffer)) unchanged++;
  }
  return { chunks, unchanged };
}

/** Errors of a store (network, auth) that end an inheritance; anything else only rules a candidate out. */
function storeError(err: unknown): boolean {
  return isTransient(err) || isSlipwayError(err, 'UNAUTHORIZED') || isSlipwayError(err, 'DENIED');
}

interface Candidate {
  parent: DiskArtifact;
  chunks: number[];
  unchanged: number;
}

/**
 * Push a boot profile for the disk `disk` (its manifest descriptor and index, just pushed to
 * `target`: a `PushResult` will do; its `dedupedAgainst` are the natural candidates, most related
 * first) inherited from one of `candidates` (see the module comment), at most 4 profile lookups
 * in flight. The parent is the candidate whose profile's chunks (those that are data in the new
 * disk, each once) are the largest fraction unchanged, at least half; a tie goes to the one with
 * more such chunks, then to the earlier candidate. Resolves undefined when the disk has a usable
 * profile already (the same image pushed again) or no candidate qualifies. A candidate whose
 * profile is missing or malformed is passed over; a store error (network, auth) rejects, and the
 * caller decides what that costs (the disk's push is complete by then).
 */
export async function inheritBootProfile(target: Target, disk: { manifest: Descriptor; index: ChunkIndex }, candidates: readonly DiskArtifact[]): Promise<InheritedProfile | undefined> {
  const own = await fetchBootProfile(target, disk.manifest.digest).catch((err: unknown) => {
    // a malformed profile of the disk's own is replaced
    if (storeError(err)) throw err;
    return undefined;
  });
  if (own !== undefined) return undefined;
  const unique = candidates.filter((c, i) => c.manifestDescriptor.digest !== disk.manifest.digest
    && c.index.chunkSizeBytes === disk.index.chunkSizeBytes && candidates.findIndex((o) => o.manifestDescriptor.digest === c.manifestDescriptor.digest) === i);
  const found: (Candidate | undefined)[] = new Array<undefined>(unique.length);
  await forEachBounded(unique, 4, async (parent, i) => {
    let profile: BootProfile;
    try {
      const raw = await fetchBootProfile(target, parent.manifestDescriptor.digest);
      if (raw === undefined) return;
      profile = checkBootProfile(raw, parent);
    } catch (err) {
      if (storeError(err)) throw err;
      return;
    }
    found[i] = { parent, ...overlap(profile, parent.index, disk.index) };
  });
  let best: Candidate | undefined;
  for (const f of found) {
    if (!f || f.chunks.length === 0 || f.unchanged * 2 < f.chunks.length) continue;
    // fractions compared without division: f.unchanged / f.chunks.length against best's
    const cmp = best ? f.unchanged * best.chunks.length - best.unchanged * f.chunks.length : 1;
    if (cmp > 0 || (cmp === 0 && best && f.chunks.length > best.chunks.length)) best = f;
  }
  if (!best) return undefined;
  const profile: BootProfile = { formatVersion: 1, disk: disk.manifest.digest, chunkSizeBytes: disk.index.chunkSizeBytes, chunks: best.chunks, inheritedFrom: best.parent.manifestDescriptor.digest };
  const descriptor = await pushBootProfile(target, disk.manifest, profile);
  return { from: best.parent.manifestDescriptor.digest, chunks: best.chunks.length, unchangedChunks: best.unchanged, descriptor };
}
