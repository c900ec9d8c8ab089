/**
 * Which failures of a manifest fetch let a tag open at the digest last seen for it: the transient
 * ones of errors.ts (`isTransient`: the registry is away, not saying no), and nothing else.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { TagRecords } from '../src/cache/cache-types.js';
import { resolveDiskManifest } from '../src/cache/disk-manifest.js';
import type { Source } from '../src/cache/remote-tier.js';
import { SlipwayError } from '../src/errors.js';
import { sha256Digest } from '../src/oci/digest.js';
import { OciLayoutStore } from '../src/oci/layout/layout-store.js';
import { parseRef } from '../src/oci/ref.js';
import type { Target } from '../src/oci/store.js';
import { MEDIA_TYPE_OCI_MANIFEST } from '../src/oci/types.js';
import { silentLogger } from '../src/util/log.js';
import { tempDir } from './helpers/images.js';

const ref = parseRef('registry.invalid:5000/disks/ci:v1');
const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE_OCI_MANIFEST, config: {}, layers: [] }));
const descriptor = { mediaType: MEDIA_TYPE_OCI_MANIFEST, digest: sha256Digest(body), size: body.byteLength };
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A cache's metadata store holding the manifest, and tag records that saw v1 resolve to it. */
async function seenBefore(): Promise<{ meta: OciLayoutStore; tags: TagRecords }> {
  const dir = tempDir('slipway-meta-');
  dirs.push(dir);
  const meta = new OciLayoutStore(join(dir, 'meta'));
  await meta.init();
  await meta.pushBlob(descriptor, body);
  const tags: TagRecords = {
    recordTag: () => undefined,
    lastSeenTag: (r) => (r === 'registry.invalid:5000/disks/ci:v1' ? { ...descriptor, seen: Date.now() - 60_000 } : undefined),
  };
  return { meta, tags };
}

/** A source whose manifest fetches fail with `err`. */
function failing(err: unknown): Source[] {
  const target = { name: 'registry.invalid:5000/disks/ci', fetchManifest: () => Promise.reject(err) } as unknown as Target;
  return [{ target, host: 'registry.invalid:5000' }];
}

function refused(): Error {
  return Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5000'), { code: 'ECONNREFUSED' });
}

describe('a tag whose registry fails', () => {
  it.each([
    ['REGISTRY_UNREACHABLE', new SlipwayError('REGISTRY_UNREACHABLE')],
    ['REGISTRY_ERROR', new SlipwayError('REGISTRY_ERROR')],
    ['TOOMANYREQUESTS', new SlipwayError('TOOMANYREQUESTS')],
    ['SIZE_INVALID (a short read)', new SlipwayError('SIZE_INVALID')],
    ['a refused connection', refused()],
  ])('opens at the digest last seen when the failure is transient: %s', async (_what, err) => {
    const { meta, tags } = await seenBefore();
    const got = await resolveDiskManifest(meta, tags, silentLogger, ref, failing(err));
    expect(got.offline).toBe(true);
    expect(got.fetched.descriptor.digest).toBe(descriptor.digest);
  });

  it.each([
    ['MANIFEST_UNKNOWN', new SlipwayError('MANIFEST_UNKNOWN')],
    ['UNAUTHORIZED', new SlipwayError('UNAUTHORIZED')],
    ['DENIED', new SlipwayError('DENIED')],
    ['TAG_UNKNOWN', new SlipwayError('TAG_UNKNOWN')],
  ])('fails with the registry\'s answer when it says no: %s', async (code, err) => {
    const { meta, tags } = await seenBefore();
    await expect(resolveDiskManifest(meta, tags, silentLogger, ref, failing(err))).rejects.toMatchObject({ code });
  });
});
