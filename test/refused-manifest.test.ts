/**
 * A reference opened as a disk that is another artifact (a memory snapshot, a boot profile) is
 * refused with NOT_A_SLIPWAY_DISK, and the refusal carries the manifest that attempt resolved
 * (`manifestRefusedAsDisk`): a restore that then reads the reference as a memory snapshot does not
 * ask the registry for it again. Against the real docker-registry.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pushBootProfile } from '../src/cache/boot-profile.js';
import { manifestRefusedAsDisk } from '../src/cache/open-disk.js';
import { pushDisk } from '../src/disk/push.js';
import { parseRef } from '../src/oci/ref.js';
import { chunkCacheBed } from './helpers/cache-bed.js';

const CHUNK = 64 * 1024;
const bed = chunkCacheBed('slipway-refused-manifest-');
const { targets, work, freshDir, openCache } = bed;
let repo: string;
let profileDigest: string;

beforeAll(async () => {
  const file = join(work, 'disk.img');
  writeFileSync(file, randomBytes(4 * CHUNK));
  repo = `${bed.registry.host}/refused/disk`;
  const target = await targets.open(parseRef(`${repo}:v1`));
  const pushed = await pushDisk({ file, target, tag: 'v1', pool: bed.pool, chunkSizeBytes: CHUNK, packSizeBytes: 4 * CHUNK });
  // another artifact in the same repository: the disk's boot profile
  profileDigest = (await pushBootProfile(target, pushed.manifest, { formatVersion: 1, disk: pushed.manifest.digest, chunkSizeBytes: CHUNK, chunks: [0, 1] })).digest;
});

describe('a reference that is not a disk', () => {
  it('is refused with the manifest it resolved to; a disk, or another error, carries none', async () => {
    const { cache } = await openCache({ cacheDir: freshDir() });
    const err = await cache.openDisk(`${repo}@${profileDigest}`).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'NOT_A_SLIPWAY_DISK' });
    const manifest = manifestRefusedAsDisk(err);
    expect(manifest?.descriptor.digest).toBe(profileDigest);
    expect(JSON.parse((manifest?.body ?? Buffer.alloc(0)).toString('utf8'))).toMatchObject({ subject: { mediaType: expect.any(String) } });
    const missing = await cache.openDisk(`${repo}:nope`).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(Error);
    expect(manifestRefusedAsDisk(missing)).toBeUndefined();
    const disk = await cache.openDisk(`${repo}:v1`);
    await disk.close();
  });
});
