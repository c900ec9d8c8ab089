/**
 * Which disks a push dedups against: the disks other tags of the target repository already
 * store, so a new version pushed under a new tag stores only the chunks that changed.
 *
 * The choice is bounded and needs nothing but the distribution API: the repository's tag list
 * (`GET /v2/<name>/tags/list`), ordered newest-looking first by a natural sort (numbers compared
 * as numbers, so `v10` > `v9`, `build-120` > `build-99`, `2026-11-30` > `2026-11-29`), the manifests
 * of at most `maxManifests` of those tags, and the config and chunk index of at most `maxDisks`
 * distinct slipway disks among them whose chunk size matches, stopping when their index blobs
 * add up to `maxIndexBytes`. Registries list no push times, and a timestamp in the manifest would
 * make the same image pushed twice two different manifests, so tag order stands in for recency.
 */
import { isManifestMissing, isSlipwayError } from '../errors.js';
import type { Target } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import { forEachBounded } from '../util/concurrency.js';
import { openDiskFromManifest, type DiskArtifact } from './artifact.js';
import { MEDIA_TYPE_DISK_CONFIG, MEDIA_TYPE_DISK_INDEX } from './format.js';

export interface RepositoryDedupLimits {
  /** tags asked of the registry (one tags/list page of this size, or several) */
  maxTags: number;
  /** manifests fetched to find the disks (one small GET each) */
  maxManifests: number;
  /** disks whose index is loaded */
  maxDisks: number;
  /** bytes of index blobs loaded in all (a dense 100 GiB disk's index is about 8.5 MiB) */
  maxIndexBytes: number;
}

export const DEFAULT_REPOSITORY_DEDUP: RepositoryDedupLimits = { maxTags: 10_000, maxManifests: 32, maxDisks: 8, maxIndexBytes: 64 << 20 };

const IN_FLIGHT = 4;

/** A tag of the referrers tag schema (distribution-spec, "Referrers Tag Schema"): `<alg>-<hex>`, with any suffix. */
const REFERRER_TAG = /^sha256-[0-9a-f]{64}(?:\..*)?$/;

/** Whether `tag` names an image a person pushed (not a referrers-fallback tag, `sha256-<hex>[.suffix]`). */
export function isImageTag(tag: string): boolean {
  return !REFERRER_TAG.test(tag);
}

/** Natural order of tags, newest-looking first: digit runs compare as numbers. */
export function newestTagsFirst(tags: readonly string[]): string[] {
  const collator = new Intl.Collator('en', { numeric: true, sensitivity: 'variant' });
  return [...tags].sort((a, b) => collator.compare(b, a));
}

/**
 * The slipway disks of `target`'s repository a push of a disk in `chunkSizeBytes` chunks may
 * refer to, newest-looking tag first, within `limits` (see the module comment). `skip` names
 * manifest digests already chosen (the tag being overwritten). A store without a tag list, or a
 * tag that is not a slipway disk or vanished meanwhile, contributes nothing; other errors
 * (network, auth) propagate, as they would fail the push anyway.
 */
export async function recentRepositoryDisks(target: Target, chunkSizeBytes: number, skip: ReadonlySet<string>, limits: RepositoryDedupLimits = DEFAULT_REPOSITORY_DEDUP): Promise<DiskArtifact[]> {
  if (!target.listTags || limits.maxDisks <= 0) return [];
  // referrers-schema tags (`sha256-<hex>` and suffixed forms: boot profiles, signatures) name
  // artifacts about a disk, never a disk: left out before the bound, or they would crowd disks out
  const tags = newestTagsFirst((await target.listTags(limits.maxTags)).filter(isImageTag)).slice(0, limits.maxManifests);
  // manifests in parallel, kept in tag order
  const manifests: ({ tag: string; descriptor: Descriptor; body: Buffer } | undefined)[] = new Array<undefined>(tags.length);
  await forEachBounded(tags.map((tag, i) => ({ tag, i })), IN_FLIGHT, async ({ tag, i }) => {
    try {
      const m = await target.fetchManifest(tag);
      manifests[i] = { tag, ...m };
    } catch (err) {
      if (isManifestMissing(err)) return;
      throw err;
    }
  });
  const chosen: { tag: string; descriptor: Descriptor; body: Buffer }[] = [];
  const seen = new Set(skip);
  let indexBytes = 0;
  for (const m of manifests) {
    if (!m || seen.has(m.descriptor.digest) || chosen.length >= limits.maxDisks) continue;
    seen.add(m.descriptor.digest);
    const index = diskIndexLayer(m.body);
    if (!index || indexBytes + index.size > limits.maxIndexBytes) continue;
    indexBytes += index.size;
    chosen.push(m);
  }
  const disks: (DiskArtifact | undefined)[] = new Array<undefined>(chosen.length);
  await forEachBounded(chosen.map((m, i) => ({ m, i })), IN_FLIGHT, async ({ m, i }) => {
    try {
      const disk = await openDiskFromManifest(target, m.tag, m.descriptor, m.body);
      if (disk.index.chunkSizeBytes === chunkSizeBytes) disks[i] = disk;
    } catch (err) {
      if (isSlipwayError(err, 'NOT_A_SLIPWAY_DISK') || isSlipwayError(err, 'UNSUPPORTED_FORMAT_VERSION') || isSlipwayError(err, 'BLOB_UNKNOWN')) return;
      throw err;
    }
  });
  return disks.filter((d): d is DiskArtifact => d !== undefined);
}

/** The index layer of a manifest that looks like a slipway disk, without fetching anything. */
function diskIndexLayer(body: Buffer): Descriptor | undefined {
  try {
    const m = JSON.parse(body.toString('utf8')) as { config?: { mediaType?: unknown }; layers?: Descriptor[] };
    if (m.config?.mediaType !== MEDIA_TYPE_DISK_CONFIG || !Array.isArray(m.layers)) return undefined;
    const first = m.layers[0];
    return first && first.mediaType === MEDIA_TYPE_DISK_INDEX && Number.isSafeInteger(first.size) ? first : undefined;
  } catch {
    return undefined;
  }
}
