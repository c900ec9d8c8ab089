/**
 * Where a disk's manifest, config and index come from when the cache opens it: the sources a
 * reference names (mirrors in order, then the origin), the cache's own copies by digest (an OCI
 * layout in `<cacheDir>/meta`), and, when every source is away, the digest a tag was last seen
 * to resolve to (docs/cache.md, "Opening a disk").
 */
import type { SlipwayConfig } from '../config.js';
import { isSlipwayError, isTransient } from '../errors.js';
import type { BlobReader } from '../disk/artifact.js';
import { isDigest } from '../oci/digest.js';
import type { OciLayoutStore } from '../oci/layout/layout-store.js';
import type { Targets } from '../oci/open.js';
import { formatRef, refReference, type ImageRef } from '../oci/ref.js';
import type { FetchedManifest } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import type { Logger } from '../util/log.js';
import type { TagRecords } from './cache-types.js';
import type { Source } from './remote-tier.js';

/** The sources of a reference: its registry's mirrors (config `mirrors`) in order, then the origin, last. */
export async function diskSources(targets: Targets, mirrors: SlipwayConfig['mirrors'], ref: ImageRef): Promise<Source[]> {
  const origin = await targets.open(ref);
  const sources: Source[] = [];
  if (ref.kind === 'registry') {
    for (const mirror of mirrors[ref.registry] ?? []) {
      sources.push({ target: await targets.open({ kind: 'registry', registry: mirror, repository: ref.repository }), host: mirror });
    }
  }
  sources.push({ target: origin, host: ref.kind === 'registry' ? ref.registry : 'local' });
  return sources;
}

/** The origin first, then the mirrors: manifests by tag and metadata blobs are asked of the origin first. */
function originFirst(sources: Source[]): Source[] {
  return [sources[sources.length - 1] as Source, ...sources.slice(0, -1)];
}

/**
 * A disk's manifest. By digest: the cache's copy if it has one. Otherwise from the origin (then
 * the mirrors), kept by digest, and a tag's digest recorded; when every source is away (a
 * transient error, errors.ts's `isTransient`), a tag resolves to the digest last seen for it,
 * with a warning, if the cache has that manifest. Anything else (the registry saying no) is thrown.
 */
export async function resolveDiskManifest(meta: OciLayoutStore, tags: TagRecords, logger: Logger, ref: ImageRef, sources: Source[]): Promise<{ fetched: FetchedManifest; offline: boolean }> {
  const reference = refReference(ref);
  const kept = isDigest(reference) ? await cachedCopy(meta, reference, () => meta.fetchManifest(reference)) : undefined;
  if (kept) return { fetched: kept, offline: false };
  let firstError: unknown;
  for (const s of originFirst(sources)) {
    try {
      const fetched = await s.target.fetchManifest(reference);
      // kept, or marked used when it is (the metadata cache evicts the least recently used)
      await meta.pushBlob(fetched.descriptor, fetched.body);
      if (!isDigest(reference)) tags.recordTag(formatRef(ref), fetched.descriptor);
      return { fetched, offline: false };
    } catch (err) {
      firstError ??= err;
      // the registry is away, not saying no: try the next source, then the tag last seen
      if (!isTransient(err)) throw err;
    }
  }
  const seen = isDigest(reference) ? undefined : tags.lastSeenTag(formatRef(ref));
  const last = seen ? await cachedCopy(meta, seen.digest, () => meta.fetchManifest(seen.digest)) : undefined;
  if (seen && last) {
    logger.warn('registry unreachable; using the digest last seen for this tag', {
      reference: formatRef(ref), digest: seen.digest, seenAt: new Date(seen.seen).toISOString(), error: (firstError as Error).message,
    });
    return { fetched: last, offline: true };
  }
  throw firstError;
}

/**
 * The metadata cache's copy of `digest` as `read` returns it (verified by digest), or undefined
 * when there is none or it is bad: the cache does not fsync (OciLayoutStore's `durable: false`),
 * so a crash may leave a torn file, which is removed here and fetched again by the caller (and a
 * copy another reader removed that way between the look and the read is none).
 */
async function cachedCopy<T>(meta: OciLayoutStore, digest: string, read: () => Promise<T>): Promise<T | undefined> {
  if (!(await meta.blobExists(digest))) return undefined;
  try {
    return await read();
  } catch (err) {
    if (isSlipwayError(err, 'BLOB_UNKNOWN') || isSlipwayError(err, 'MANIFEST_UNKNOWN')) return undefined;
    if (!isSlipwayError(err, 'DIGEST_MISMATCH')) throw err;
    await meta.removeBlob(digest);
    return undefined;
  }
}

/** Blob reads for opening a disk: the metadata cache first, then each source; what is fetched is kept. */
export function cachingBlobReader(meta: OciLayoutStore, sources: Source[], name: string): BlobReader {
  return {
    name,
    async fetchBlob(desc: Descriptor): Promise<Buffer> {
      const kept = await cachedCopy(meta, desc.digest, () => meta.fetchBlob(desc));
      if (kept) return kept;
      let lastError: unknown;
      for (const s of originFirst(sources)) {
        try {
          const data = await s.target.fetchBlob(desc);
          await meta.pushBlob(desc, data);
          return data;
        } catch (err) {
          lastError = err;
        }
      }
      throw lastError;
    },
  };
}
