import type { ProgressFn } from '../util/progress.js';
import { forEachBounded } from '../util/concurrency.js';
import type { Target } from './store.js';
import { isIndexMediaType, successors, type Descriptor } from './types.js';

/** Blobs copied at once: the registry round trip, not bandwidth, bounds small-blob copies. */
const BLOBS_IN_FLIGHT = 4;
/** Blobs above this are streamed rather than held in memory. */
const STREAM_ABOVE_BYTES = 32 << 20;

export interface CopyOptions {
  src: Target;
  srcReference: string;
  dst: Target;
  /** Tag to set at the destination; untagged (by digest) when absent. */
  dstTag?: string;
  onProgress?: ProgressFn;
}

export interface CopyResult {
  descriptor: Descriptor;
  copiedBlobs: number;
  mountedBlobs: number;
  skippedBlobs: number;
  copiedBytes: number;
}

/**
 * Copy one manifest (or index) and everything it references from one store to another: the one
 * copy function for layouts and registries alike. A blob the destination holds is skipped; in one
 * registry a blob is mounted across repositories instead of sent; the root manifest is written
 * last, so the destination tag never points at an incomplete graph.
 */
export async function copyImage(opts: CopyOptions): Promise<CopyResult> {
  const { src, dst } = opts;
  const result: CopyResult = { descriptor: { mediaType: '', digest: '', size: 0 }, copiedBlobs: 0, mountedBlobs: 0, skippedBlobs: 0, copiedBytes: 0 };
  const root = await src.fetchManifest(opts.srcReference);
  const blobs = new Map<string, Descriptor>();
  const childManifests: { desc: Descriptor; body: Buffer }[] = [];
  const walk = async (mediaType: string, body: Buffer): Promise<void> => {
    for (const d of successors(mediaType, body)) {
      if (isIndexMediaType(mediaType)) {
        const child = await src.fetchManifest(d.digest);
        await walk(child.descriptor.mediaType || d.mediaType, child.body);
        childManifests.push({ desc: d, body: child.body });
      } else {
        blobs.set(d.digest, d);
      }
    }
  };
  await walk(root.descriptor.mediaType, root.body);
  const totalBytes = [...blobs.values()].reduce((s, b) => s + b.size, 0);
  let doneBytes = 0;
  await forEachBounded([...blobs.values()], BLOBS_IN_FLIGHT, async (desc) => {
    if (await dst.blobExists(desc.digest)) result.skippedBlobs++;
    else if (dst.mountBlob && (await dst.mountBlob(desc, src))) result.mountedBlobs++;
    else {
      if (desc.size > STREAM_ABOVE_BYTES) await dst.pushBlobStream(desc, await src.fetchBlobStream(desc));
      else await dst.pushBlob(desc, await src.fetchBlob(desc));
      result.copiedBlobs++;
      result.copiedBytes += desc.size;
    }
    doneBytes += desc.size;
    opts.onProgress?.({ op: 'copy', phase: 'blob', doneBytes, totalBytes });
  });
  for (const child of childManifests) await dst.pushManifest(child.body, child.desc.mediaType);
  result.descriptor = await dst.pushManifest(root.body, root.descriptor.mediaType, opts.dstTag);
  opts.onProgress?.({ op: 'copy', phase: 'done', doneBytes, totalBytes });
  return result;
}
