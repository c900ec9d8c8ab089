/**
 * Small metadata on a restore's or a boot's critical path rides in its manifest (image-spec v1.1
 * descriptor `data`): a disk's config and index (when small), a memory snapshot's config (with the
 * disk and RAM manifests in it), a boot profile. Readers use it only when it matches its
 * descriptor's digest and size, and fetch the blob otherwise. Against the real docker-registry (it
 * must store and serve manifests with `data` as pushed).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fetchBootProfile, profileTag, pushBootProfile, type BootProfile } from '../src/cache/boot-profile.js';
import { loadMemorySnapshot, pushMemorySnapshot, type MemorySnapshotConfig } from '../src/disk/memory-snapshot.js';
import { openDiskFromManifest } from '../src/disk/artifact.js';
import { pushDisk } from '../src/disk/push.js';
import { embeddedContent, MAX_EMBEDDED_BYTES, sha256Digest, withEmbeddedData } from '../src/oci/digest.js';
import { parseRef } from '../src/oci/ref.js';
import type { Target } from '../src/oci/store.js';
import { MEDIA_TYPE_OCI_MANIFEST, type Descriptor, type ImageManifest } from '../src/oci/types.js';
import { chunkCacheBed } from './helpers/cache-bed.js';

const CHUNK = 64 * 1024;
const bed = chunkCacheBed('slipway-embedded-');
const { work } = bed;
let target: Target;
let disk: Descriptor;
let diskBody: Buffer;

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
  const pushed = await pushDisk({ file, target, tag: 'v1', pool: bed.pool, chunkSizeBytes: CHUNK, packSizeBytes: 4 * CHUNK });
  disk = pushed.manifest;
  diskBody = pushed.manifestBody;
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

    // the disk and RAM manifests ride in the config while it still fits in its own `data` (the
    // disk's dropped first); the subject never carries the disk manifest
    const filler = (n: number): Descriptor => {
      const content = randomBytes(n);
      return withEmbeddedData({ mediaType: MEDIA_TYPE_OCI_MANIFEST, digest: sha256Digest(content), size: n }, content);
    };
    const small = { ...config, disk: withEmbeddedData(disk, diskBody), ram: filler(1000) };
    await pushMemorySnapshot(target, 'snap-small', small, [Buffer.from('device state')]);
    const smallManifest = await manifestAt('snap-small');
    expect(smallManifest.subject).toEqual({ mediaType: disk.mediaType, digest: disk.digest, size: disk.size });
    const loadedSmall = (await loadMemorySnapshot(target, 'snap-small')).config;
    expect(embeddedContent(loadedSmall.disk)?.equals(diskBody)).toBe(true);
    expect(embeddedContent(loadedSmall.ram)).toBeDefined();
    await pushMemorySnapshot(target, 'snap-large', { ...config, disk: filler(40_000), ram: filler(30_000) }, [Buffer.from('device state')]);
    const largeManifest = await manifestAt('snap-large');
    expect(largeManifest.config.data, 'the config still rides in the manifest').toBeDefined();
    const loadedLarge = (await loadMemorySnapshot(target, 'snap-large')).config;
    expect(loadedLarge.disk.data).toBeUndefined();
    expect(embeddedContent(loadedLarge.ram)?.byteLength).toBe(30_000);

    const lie = Buffer.from(JSON.stringify({ ...config, shape: { ...config.shape, cpus: 8 } }));
    await target.pushManifest(Buffer.from(JSON.stringify({ ...manifest, config: { ...manifest.config, data: lie.toString('base64') } })), MEDIA_TYPE_OCI_MANIFEST, 'snap-lie');
    const wary = counting(target);
    expect((await loadMemorySnapshot(wary.target, 'snap-lie', undefined, wary.target)).config).toEqual(config);
    expect(wary.blobReads).toEqual([manifest.config.digest]);
  });
});

describe('a disk', () => {
  it('opens from its manifest alone: its config and index are embedded; an index over the bound is fetched', async () => {
    const manifest = JSON.parse(diskBody.toString('utf8')) as ImageManifest;
    expect(manifest.config.data).toBeDefined();
    expect(manifest.layers[0]?.data).toBeDefined();
    expect(manifest.layers.slice(1).every((l) => l.data === undefined), 'packs are never embedded').toBe(true);
    const plain = counting(target);
    const opened = await openDiskFromManifest(plain.target, 'v1', disk, diskBody);
    expect(opened.index.chunkCount).toBe(4);
    expect(plain.blobReads).toEqual([]);

    // 4,000 chunks of random bytes: an index of more than MAX_EMBEDDED_BYTES (the digests do not compress)
    const big = join(work, 'big.img');
    writeFileSync(big, randomBytes(4000 * 4096));
    const pushed = await pushDisk({ file: big, target, tag: 'big', pool: bed.pool, chunkSizeBytes: 4096, packSizeBytes: 4 << 20 });
    const bigManifest = JSON.parse(pushed.manifestBody.toString('utf8')) as ImageManifest;
    expect(bigManifest.layers[0]?.size).toBeGreaterThan(MAX_EMBEDDED_BYTES);
    expect(bigManifest.layers[0]?.data).toBeUndefined();
    expect(bigManifest.config.data).toBeDefined();
    const wary = counting(target);
    expect((await openDiskFromManifest(wary.target, 'big', pushed.manifest, pushed.manifestBody)).index.chunkCount).toBe(4000);
    expect(wary.blobReads).toEqual([bigManifest.layers[0]?.digest]);
  });

  it("a cache kept an embedded manifest: opening it by digest asks the registry for no manifest, config or index", async () => {
    const proxy = await bed.chaos();
    const { cache } = await bed.openCache({ cacheDir: bed.freshDir() });
    // what a memory snapshot's config carries, and a descriptor whose data lies (not kept)
    const lie = { ...disk, digest: sha256Digest(Buffer.from('other')), data: diskBody.toString('base64') };
    await cache.keepEmbedded([withEmbeddedData(disk, diskBody), lie]);
    proxy.clearLog();
    const opened = await cache.openDisk(`${proxy.host}/embedded/vm@${disk.digest}`, { useProfile: false });
    expect(opened.artifact.index.chunkCount).toBe(4);
    expect(proxy.requests.filter((r) => r.kind !== 'other')).toEqual([]);
    await opened.close();
    const missing = await cache.openDisk(`${proxy.host}/embedded/vm@${lie.digest}`, { useProfile: false }).catch((e: unknown) => e);
    expect(missing).toMatchObject({ code: 'MANIFEST_UNKNOWN' });
  });
});
