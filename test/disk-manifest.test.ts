/**
 * Which failures of a manifest fetch let a tag open at the digest last seen for it: the transient
 * ones of errors.ts (`isTransient`: the registry is away, not saying no), and nothing else. And
 * the metadata cache's copies, written without fsync: one torn by a crash is fetched again.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync, rmSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import type { TagRecords } from '../src/cache/cache-types.js';
import { cachingBlobReader, resolveDiskManifest } from '../src/cache/disk-manifest.js';
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

describe('a copy in the metadata cache torn by a crash', () => {
  /** A source that serves the manifest (and it as a blob), counting what it was asked. */
  function serving(): { sources: Source[]; asked: string[] } {
    const asked: string[] = [];
    const target = {
      name: 'registry.invalid:5000/disks/ci',
      fetchManifest: (r: string) => (asked.push(`manifest ${r}`), Promise.resolve({ descriptor, body })),
      fetchBlob: (d: { digest: string }) => (asked.push(`blob ${d.digest}`), Promise.resolve(body)),
    } as unknown as Target;
    return { sources: [{ target, host: 'registry.invalid:5000' }], asked };
  }
  const tear = (meta: OciLayoutStore): void => truncateSync(join(meta.dir, 'blobs', 'sha256', descriptor.digest.slice(7)), 10);
  const kept = (meta: OciLayoutStore): Buffer => readFileSync(join(meta.dir, 'blobs', 'sha256', descriptor.digest.slice(7)));

  it('a manifest opened by digest is fetched again, and kept whole', async () => {
    const { meta, tags } = await seenBefore();
    const byDigest = parseRef(`registry.invalid:5000/disks/ci@${descriptor.digest}`);
    const { sources, asked } = serving();
    expect((await resolveDiskManifest(meta, tags, silentLogger, byDigest, sources)).fetched.body).toEqual(body);
    expect(asked).toEqual([]);
    tear(meta);
    expect((await resolveDiskManifest(meta, tags, silentLogger, byDigest, sources)).fetched.body).toEqual(body);
    expect(asked).toEqual([`manifest ${descriptor.digest}`]);
    expect(kept(meta)).toEqual(body);
  });

  it('a blob read through the cache is fetched again, and kept whole', async () => {
    const { meta } = await seenBefore();
    const { sources, asked } = serving();
    tear(meta);
    expect(await cachingBlobReader(meta, sources, 'ci').fetchBlob(descriptor)).toEqual(body);
    expect(asked).toEqual([`blob ${descriptor.digest}`]);
    expect(kept(meta)).toEqual(body);
  });

  it('with the registry away, a torn last-seen manifest is no fallback: the registry\'s error, and the copy is gone', async () => {
    const { meta, tags } = await seenBefore();
    tear(meta);
    await expect(resolveDiskManifest(meta, tags, silentLogger, ref, failing(new SlipwayError('REGISTRY_UNREACHABLE')))).rejects.toMatchObject({ code: 'REGISTRY_UNREACHABLE' });
    expect(await meta.blobExists(descriptor.digest)).toBe(false);
  });
});
