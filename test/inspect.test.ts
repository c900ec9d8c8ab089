/**
 * `slipway inspect` describes what a reference is: a disk with its boot profile (none, recorded,
 * or inherited), or a memory snapshot with the VM shape it restores into; `pull` of a memory
 * snapshot says what it is and names its disk. Real files, a real OCI layout, the real CLI.
 */
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { pushBootProfile } from '../src/cache/boot-profile.js';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { sha256Digest } from '../src/oci/digest.js';
import { ARTIFACT_TYPE_MEMORY_SNAPSHOT, diskTag, pushMemorySnapshot, ramTag, type VmShape } from '../src/disk/memory-snapshot.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { makeSparse, tempDir } from './helpers/images.js';
import { jsonOut, runCli } from './helpers/run-cli.js';

const work = tempDir();
const targets = new Targets();
afterAll(() => targets.close());
const CHUNK = 64 * 1024;

function image(name: string): string {
  return makeSparse(join(work, name), 1 << 20, [{ offset: 0, length: 256 << 10 }]);
}

describe('slipway inspect', () => {
  it('a disk: its boot profile, none until one is stored, then its size and where it came from', async () => {
    const ref = `oci:${join(work, 'disks')}:v1`;
    const pushed = jsonOut<{ digest: string }>(await runCli(['push', image('v1.img'), ref, '--chunk-size', '64K', '--progress=none']));
    expect(jsonOut(await runCli(['inspect', ref]))).toMatchObject({ digest: pushed.digest, bootProfile: null });
    const target = await targets.open(parseRef(ref));
    const disk = await openDiskArtifact(target, 'v1');
    await pushBootProfile(target, disk.manifestDescriptor, { formatVersion: 1, disk: pushed.digest, chunkSizeBytes: CHUNK, chunks: [2, 0, 1] });
    expect(jsonOut(await runCli(['inspect', ref]))).toMatchObject({ digest: pushed.digest, bootProfile: { chunks: 3 } });
    // a profile naming a chunk outside the disk: said, and the disk still described
    await pushBootProfile(target, disk.manifestDescriptor, { formatVersion: 1, disk: pushed.digest, chunkSizeBytes: CHUNK, chunks: [99999] });
    expect(jsonOut(await runCli(['inspect', ref]))).toMatchObject({ digest: pushed.digest, bootProfile: { error: expect.stringMatching(/malformed/) } });
  });

  it('a memory snapshot: what it is and its VM shape; pull refuses it naming its disk', async () => {
    const layout = join(work, 'snapshots');
    const diskPush = jsonOut<{ digest: string }>(await runCli(['push', image('disk.img'), `oci:${layout}:${diskTag('warm')}`, '--chunk-size', '64K', '--progress=none']));
    const ramPush = jsonOut<{ digest: string }>(await runCli(['push', image('ram.img'), `oci:${layout}:${ramTag('warm')}`, '--chunk-size', '64K', '--progress=none']));
    const target = await targets.open(parseRef(`oci:${layout}:warm`));
    const manifestOf = async (tag: string) => (await target.fetchManifest(tag)).descriptor;
    const shape: VmShape = { vmm: 'qemu', vmmVersion: '7.2.0', machine: 'q35', cpus: 1, memoryMiB: 512, devices: ['virtio-blk'], kernel: `sha256:${'a'.repeat(64)}`, initramfs: `sha256:${'b'.repeat(64)}` };
    const state = randomBytes(1000);
    const snap = await pushMemorySnapshot(target, 'warm', { formatVersion: 1, shape, disk: await manifestOf(diskTag('warm')), ram: await manifestOf(ramTag('warm')), createdAt: '2026-12-01T00:00:00.000Z' }, [state]);

    const described = jsonOut(await runCli(['inspect', `oci:${layout}:warm`]));
    expect(described).toMatchObject({ digest: snap.digest, artifactType: ARTIFACT_TYPE_MEMORY_SNAPSHOT, shape, disk: diskPush.digest, ram: ramPush.digest, parent: null, deviceStateBytes: 1000 });

    // a snapshot whose config is not JSON: CORRUPT_INDEX, no stack trace
    const junk = Buffer.from('not json{');
    const junkDesc = { mediaType: 'application/vnd.slipway.memory-snapshot.config.v1+json', digest: sha256Digest(junk), size: junk.length };
    await target.pushBlob(junkDesc, junk);
    const manifest = JSON.parse((await target.fetchManifest('warm')).body.toString('utf8')) as { config: unknown };
    manifest.config = junkDesc;
    await target.pushManifest(Buffer.from(JSON.stringify(manifest)), 'application/vnd.oci.image.manifest.v1+json', 'junk');
    const bad = await runCli(['inspect', `oci:${layout}:junk`]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^slipway inspect: error CORRUPT_INDEX: .*config is not JSON/);

    const pulled = await runCli(['pull', `oci:${layout}:warm`, join(work, 'warm.img')]);
    expect(pulled.code).toBe(1);
    expect(pulled.stderr).toMatch(/error NOT_A_SLIPWAY_DISK: .* is a memory snapshot, not a disk; its disk is oci:.*:warm\.disk/);
  });
});
