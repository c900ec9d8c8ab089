/**
 * Why a disk could not be read, said better for a person where it can: a missing tag with the
 * tags its repository has (`GET /v2/<name>/tags/list`, following its pages up to TAGS_LOOKED_AT
 * tags, made only on this error path of the CLI, never by the daemon for a scheduler), a memory
 * snapshot given where a disk is read. Used by the disk commands, `run` (on its own or through a
 * daemon) and `vm create`.
 */
import { SlipwayError, isSlipwayError } from '../errors.js';
import { isImageTag, newestTagsFirst } from '../disk/dedup.js';
import { diskTag, isMemorySnapshotManifest } from '../disk/memory-snapshot.js';
import { withTargets } from '../oci/open.js';
import { DEFAULT_TAG, formatRef, parseRef, refReference, type ImageRef } from '../oci/ref.js';
import type { Target } from '../oci/store.js';
import type { RegistryClientOptions } from '../oci/registry/transport.js';

/** Tags a missing tag's error looks at (tags/list, its pages followed), and lists at most. */
const TAGS_LOOKED_AT = 1000;
const TAGS_LISTED = 10;

/**
 * `err` again, as a TAG_UNKNOWN whose message ends with the tags `target` has (newest-looking
 * first, at most TAGS_LISTED named), when it is a TAG_UNKNOWN and the repository has image tags to
 * list; otherwise `err` itself, unchanged (a repository that does not exist, or that cannot be
 * listed, adds nothing). Never throws.
 */
export async function withRepositoryTags(err: unknown, target: Target): Promise<unknown> {
  if (!isSlipwayError(err, 'TAG_UNKNOWN') || !target.listTags) return err;
  const tags = await target.listTags(TAGS_LOOKED_AT).then((t) => newestTagsFirst(t.filter(isImageTag)), () => []);
  if (tags.length === 0) return err;
  const more = tags.length > TAGS_LISTED ? `, and ${tags.length - TAGS_LISTED} more` : '';
  return new SlipwayError('TAG_UNKNOWN', `${err.message}; its tags: ${tags.slice(0, TAGS_LISTED).join(', ')}${more}`, { context: err.context, cause: err });
}

/** How long the CLI waits for a registry's tag list on another process's error (one attempt). */
const TAGS_OF_ANSWER_MS = 3000;

/**
 * The same for an error that came from elsewhere (a daemon's answer about the image `refText`):
 * its repository asked from here, with the registry options `options()` gives, in one attempt of
 * at most TAGS_OF_ANSWER_MS (the error is not held up by a registry this host cannot reach). Only
 * a registry reference: a layout or a name of the embedded store is the daemon's own, not this
 * process's. `err` unchanged otherwise, or when the tags cannot be had. Never throws.
 */
export async function withRepositoryTagsOf(err: unknown, refText: string, options: () => RegistryClientOptions): Promise<unknown> {
  if (!isSlipwayError(err, 'TAG_UNKNOWN')) return err;
  try {
    const ref = parseRef(refText);
    if (ref.kind !== 'registry') return err;
    const once: RegistryClientOptions = { ...options(), retry: { maxAttempts: 1 }, requestTimeoutMs: TAGS_OF_ANSWER_MS };
    return await withTargets(once, async (targets) => withRepositoryTags(err, await targets.open(ref)));
  } catch {
    return err;
  }
}

/**
 * Why `ref` could not be read, said better where it can (rethrows `err` otherwise): a TAG_UNKNOWN
 * with the tags the repository has (`withRepositoryTags`); a NOT_A_SLIPWAY_DISK of a memory
 * snapshot naming the snapshot's disk (its `<tag>.disk`, a disk like any other) and how the
 * snapshot itself is used.
 */
export async function explainUnreadable(err: unknown, target: Target, ref: ImageRef): Promise<never> {
  if (isSlipwayError(err, 'NOT_A_SLIPWAY_DISK')) {
    const body = await target.fetchManifest(refReference(ref)).then((m) => m.body, () => undefined);
    if (body && isMemorySnapshotManifest(body)) {
      const { digest: _digest, ...named } = ref;
      const disk = ref.digest === undefined ? `; its disk is ${formatRef({ ...named, tag: diskTag(ref.tag ?? DEFAULT_TAG) })}` : '';
      throw new SlipwayError('NOT_A_SLIPWAY_DISK', `${formatRef(ref)} is a memory snapshot, not a disk${disk}; \`slipway run\` or \`vm create\` resumes it, \`slipway inspect\` describes it`);
    }
  }
  throw await withRepositoryTags(err, target);
}
