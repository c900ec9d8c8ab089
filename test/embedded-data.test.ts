/**
 * Small metadata on a restore's or a boot's critical path rides in its manifest (image-spec v1.1
 * descriptor `data`): a memory snapshot's config and a boot profile. Readers use it only when it
 * matches its descriptor's digest and size, and fetch the blob otherwise. Against the real
 * docker-registry (it must store and serve manifests with `data` as pushed).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fetchBootProfile, profileTag, pushBootProfile, type BootProfile } from '../src/cache/boot-profile.js';
import { loadMemorySnapshot, pushMemorySnapshot, type MemorySnapshotConfig } from '../src/disk/memory-snapshot.js';
import { pushDisk } from '../src/disk/push.js';
import { embeddedContent, MAX_EMBEDDED_BYTES, sha256Digest, withEmbeddedData } from '../src/oci/digest.js';
import { parseRef } from '../src/oci/ref.js';
import type { Target } from '../src/oci/store.js';
import { MEDIA_TYPE_OCI_MANIFEST, type Descriptor, type ImageManifest } from '../src/oci/types.js';
import { tempDir } from './helpers/images.js';
import { registryBed } from './helpers/registry-bed.js';

const CHUNK = 64 * 1024;
const bed = registryBed();
const work = tempDir('slipway-embedded-');
let target: Target;
let disk: Descriptor;

/** `target` with its blob reads counted (what a reader had to fetch besides the manifest). */
function counting(t: Target): { target: Target; blobReads: string[] } {
  const blobReads: string[] = [];
  const wrapped = new Proxy(t, {
    get(obj, prop, receiver) {
      const v = Reflect.get(obj, prop, receiver) as unknown;
      if (prop === 'fetchBlob' && typeof v === 'function') {
        return (desc: Descriptor) => {
          blobReads.push(desc.digest);
          return (v as (d: Descriptor) => Promise<Buffer>).call(obj, desc);
        };
      }
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(obj) : v;
    },
  });
  return { target: wrapped, blobReads };
}

async function manifestAt(tag: string): Promise<ImageManifest> {
  return JSON.parse((await target.fetchManifest(tag)).body.toString('utf8')) as ImageManifest;
}

beforeAll(async () => {
  const file = join(work, 'disk.img');
  writeFileSync(file, randomBytes(4 * CHUNK));
  target = await bed.targets.open(parseRef(`${bed.registry.host}/embedded/vm:v1`));
  disk = (await pushDisk({ file, target, tag: 'v1', pool: bed.pool, chunkSizeBytes: CHUNK, packSizeBytes: 4 * CHUNK })).manifest;
});

describe('withEmbeddedData and embeddedContent', () => {
  const content = Buffer.from('{"a":1}');
  const desc = { mediaType: 'application/json', digest: sha256Digest(content), size: content.byteLength };

  it('embed small content and give it back only when it is what the descriptor names', () => {
    const embedded = withEmbeddedData(desc, content);
    expect(embedded.data).toBe(content.toString('base64'));
    expect(embeddedContent(embedded)?.equals(content)).toBe(true);
    expect(embeddedContent(desc)).toBeUndefined();
    // same length, other bytes; other length; not a string
    expect(embeddedContent({ ...desc, data: Buffer.from('{"a":2}').toString('base64') })).toBeUndefined();
    expect(embeddedContent({ ...desc, data: Buffer.from('{"a":1} ').toString('base64') })).toBeUndefined();
    expect(embeddedContent({ ...desc, data: 42 })).toBeUndefined();
  });

  it('leave content over MAX_EMBEDDED_BYTES to its blob', () => {
    const big = randomBytes(MAX_EMBEDDED_BYTES + 1);
    expect(withEmbeddedData({ ...desc, digest: sha256Digest(big), size: big.byteLength }, big).data).toBeUndefined();
    const edge = randomBytes(MAX_EMBEDDED_BYTES);
    const d = withEmbeddedData({ ...desc, digest: sha256Digest(edge), size: edge.byteLength }, edge);
    expect(embeddedContent(d)?.equals(edge)).toBe(true);
  });
});

describe('a boot profile', () => {
  it('is read from its manifest without a blob request; a manifest whose data is wrong falls back to the blob', async () => {
    const profile: BootProfile = { formatVersion: 1, disk: disk.digest, chunkSizeBytes: CHUNK, chunks: [3, 0, 2] };
    await pushBootProfile(target, disk, profile);
    const manifest = await manifestAt(profileTag(disk.digest));
    expect(manifest.layers[0]?.data, 'the registry kept the embedded profile').toBeDefined();
    const plain = counting(target);
    expect(await fetchBootProfile(plain.target, disk.digest)).toEqual(profile);
    expect(plain.blobReads).toEqual([]);

    // a registry (or pusher) whose embedded copy disagrees with the digest: the blob is what counts
    const lie = Buffer.from(JSON.stringify({ ...profile, chunks: [1, 0, 2] }));
    const layer = manifest.layers[0] as Descriptor;
    await target.pushManifest(Buffer.from(JSON.stringify({ ...manifest, layers: [{ ...layer, data: lie.toString('base64') }] })), MEDIA_TYPE_OCI_MANIFEST, profileTag(disk.digest));
    const wary = counting(target);
    expect(await fetchBootProfile(wary.target, disk.digest)).toEqual(profile);
    expect(wary.blobReads).toEqual([layer.digest]);
  });
});

describe("a memory snapshot's config", () => {
  it('is read from its manifest without a blob request; a manifest whose data is wrong falls back to the blob', async () => {
    const config: MemorySnapshotConfig = {
      formatVersion: 1,
      shape: { vmm: 'qemu', vmmVersion: '7.2.0', machine: 'q35', cpus: 1, memoryMiB: 256, devices: ['virtio-blk'], kernel: sha256Digest(Buffer.from('k')), initramfs: sha256Digest(Buffer.from('i')) },
      disk, ram: disk, createdAt: new Date(0).toISOString(),
    };
    await pushMemorySnapshot(target, 'snap', config, [Buffer.from('device state')]);
    const manifest = await manifestAt('snap');
    expect(manifest.config.data, 'the registry kept the embedded config').toBeDefined();
    const plain = counting(target);
    expect((await loadMemorySnapshot(plain.target, 'snap', undefined, plain.target)).config).toEqual(config);
    expect(plain.blobReads).toEqual([]);

    const lie = Buffer.from(JSON.stringify({ ...config, shape: { ...config.shape, cpus: 8 } }));
    await target.pushManifest(Buffer.from(JSON.stringify({ ...manifest, config: { ...manifest.config, data: lie.toString('base64') } })), MEDIA_TYPE_OCI_MANIFEST, 'snap-lie');
    const wary = counting(target);
    expect((await loadMemorySnapshot(wary.target, 'snap-lie', undefined, wary.target)).config).toEqual(config);
    expect(wary.blobReads).toEqual([manifest.config.digest]);
  });
});
