/**
 * A new version of a disk inherits the boot profile of the version it was deduplicated against
 * (docs/cache.md, "Boot profiles"). A fleet rebuilds its images (a nightly CI runner, a patched
 * sandbox) far more often than it makes new ones; a rebuild pushed under a new tag has never been
 * booted, but its boot reads the same places of the same file system as the last version's did.
 * At push, the new disk gets a profile derived from the best-matching profiled disk among those
 * the push deduplicated against (the tag's previous disk, then the repository's newest-looking
 * tags); its first boot then prefetches that profile and refines it with what it still had to
 * fetch (`refineProfile`), as any boot with a profile does.
 *
 * "Best-matching": the most profile chunks whose content at the same chunk number is unchanged.
 * A candidate where fewer than half of its profile's chunks are unchanged is not used: the file
 * system was laid out anew (a rebuild from scratch that dedup barely matched), and the profile
 * would prefetch the wrong places.
 */
import { isSlipwayError } from '../errors.js';
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
  /** of the parent profile's chunks, how many hold the same content at the same chunk number */
  unchangedChunks: number;
  descriptor: Descriptor;
}

/** A parent profile's chunks whose content is unchanged at the same chunk number in `index`. */
function unchangedAt(profile: BootProfile, parent: ChunkIndex, index: ChunkIndex): number {
  let same = 0;
  for (const n of profile.chunks) {
    if (n >= index.chunkCount) continue;
    const a = parent.map[n] as number;
    const b = index.map[n] as number;
    if (a === HOLE || b === HOLE) {
      if (a === b) same++;
      continue;
    }
    if ((parent.entries[a]?.digest as Buffer).equals(index.entries[b]?.digest as Buffer)) same++;
  }
  return same;
}

/**
 * Push a boot profile for the disk `disk` (its manifest descriptor and index, just pushed to
 * `target`: a `PushResult` will do; its `dedupedAgainst` are the natural candidates) inherited from the best-matching profiled disk of `candidates` (see the module
 * comment); at most 4 profile lookups in flight. Resolves undefined when the disk has a profile
 * already (the same image pushed again) or no candidate qualifies. A candidate whose profile is
 * missing or malformed is passed over; a store error (network, auth) rejects, and the caller
 * decides what that costs (the disk's push is complete by then).
 */
export async function inheritBootProfile(target: Target, disk: { manifest: Descriptor; index: ChunkIndex }, candidates: readonly DiskArtifact[]): Promise<InheritedProfile | undefined> {
  if ((await fetchBootProfile(target, disk.manifest.digest)) !== undefined) return undefined;
  const unique = candidates.filter((c, i) => c.manifestDescriptor.digest !== disk.manifest.digest
    && c.index.chunkSizeBytes === disk.index.chunkSizeBytes && candidates.findIndex((o) => o.manifestDescriptor.digest === c.manifestDescriptor.digest) === i);
  const found: ({ parent: DiskArtifact; profile: BootProfile; unchanged: number } | undefined)[] = new Array<undefined>(unique.length);
  await forEachBounded(unique, 4, async (parent, i) => {
    let profile: BootProfile;
    try {
      const raw = await fetchBootProfile(target, parent.manifestDescriptor.digest);
      if (raw === undefined) return;
      profile = checkBootProfile(raw, parent);
    } catch (err) {
      if (isSlipwayError(err, 'INVALID_ARGUMENT') || err instanceof SyntaxError) return;
      throw err;
    }
    found[i] = { parent, profile, unchanged: unchangedAt(profile, parent.index, disk.index) };
  });
  // the most unchanged chunks wins; candidates come newest first, so a tie goes to the newer
  let best: { parent: DiskArtifact; profile: BootProfile; unchanged: number } | undefined;
  for (const f of found) if (f && f.unchanged * 2 >= f.profile.chunks.length && f.unchanged > (best?.unchanged ?? 0)) best = f;
  if (!best) return undefined;
  const chunks = best.profile.chunks.filter((n) => n < disk.index.chunkCount && disk.index.map[n] !== HOLE);
  if (chunks.length === 0) return undefined;
  const profile: BootProfile = { formatVersion: 1, disk: disk.manifest.digest, chunkSizeBytes: disk.index.chunkSizeBytes, chunks, inheritedFrom: best.parent.manifestDescriptor.digest };
  const descriptor = await pushBootProfile(target, disk.manifest, profile);
  return { from: best.parent.manifestDescriptor.digest, chunks: chunks.length, unchangedChunks: best.unchanged, descriptor };
}
