/**
 * Round trips through a real registry and an OCI layout: byte-for-byte equality, holes kept as
 * holes, odd sizes, both compression modes, and dedup counts on repeated and changed pushes.
 */
import { describe, expect, it } from 'vitest';
import { copyFileSync, openSync, statSync, writeSync, closeSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { checkImageFile, pushDisk } from '../src/disk/push.js';
import { pullDisk } from '../src/disk/pull.js';
import { parseRef, refReference } from '../src/oci/ref.js';
import { registryBed } from './helpers/registry-bed.js';
import { makeExt4, makeSparse, sha256File, tempDir } from './helpers/images.js';

const bed = registryBed();
const { targets } = bed;
const work = tempDir();


async function roundTrip(file: string, refText: string, opts: { chunkSizeBytes?: number; compression?: 'zstd' | 'none'; packSizeBytes?: number } = {}) {
  const ref = parseRef(refText);
  const target = await targets.open(ref, { createLayout: true });
  const pushed = await pushDisk({ file, target, tag: ref.tag ?? 'latest', pool: bed.pool, ...opts });
  const disk = await openDiskArtifact(target, refReference(ref));
  const out = join(work, `out-${randomBytes(4).toString('hex')}.img`);
  const pulled = await pullDisk({ target, disk, outFile: out, pool: bed.pool });
  return { pushed, pulled, out, disk };
}

const where = (kind: 'layout' | 'registry', name: string) => kind === 'layout' ? `oci:${join(work, 'layout')}:${name}` : `${bed.registry.host}/disks/${name}:v1`;

describe.each(['layout', 'registry'] as const)('round trip via %s', (kind) => {
  it('an ext4 image of real files comes back byte for byte, holes as holes', async () => {
    const img = makeExt4(join(work, `ext4-${kind}.img`), 48, join(process.cwd(), 'src'));
    const { out, pushed, pulled } = await roundTrip(img, where(kind, `ext4-${kind}`));
    expect(sha256File(out)).toBe(sha256File(img));
    expect(pushed.config.stats.zeroChunks).toBeGreaterThan(0);
    // the pulled file is sparse: it allocates little more than the non-zero chunks
    const allocated = statSync(out).blocks * 512;
    expect(allocated).toBeLessThanOrEqual((pushed.config.chunkCount - pushed.config.stats.zeroChunks) * pushed.config.chunkSizeBytes + (64 << 10));
    expect(pulled.fetchedBytes).toBe(pushed.config.stats.storedBytes);
  });

  it('an odd-sized sparse image (whole sectors, not whole chunks), uncompressed', async () => {
    const size = 3 * 1024 * 1024 + 7 * 512;
    const img = makeSparse(join(work, `odd-${kind}.img`), size, [{ offset: 0, length: 4096 }, { offset: size - 1000, length: 1000 }, { offset: 1 << 20, length: 300_000 }]);
    const { out, disk } = await roundTrip(img, where(kind, `odd-${kind}`), { chunkSizeBytes: 64 << 10, compression: 'none' });
    expect(statSync(out).size).toBe(size);
    expect(sha256File(out)).toBe(sha256File(img));
    expect(disk.index.entries.every((e) => e.flags === 0)).toBe(true);
  });

  it('an all-zero image stores no chunk at all', async () => {
    const img = makeSparse(join(work, `zero-${kind}.img`), 8 << 20, []);
    const { out, pushed } = await roundTrip(img, where(kind, `zero-${kind}`));
    expect(pushed.config.stats.uniqueChunks).toBe(0);
    expect(pushed.config.stats.packs).toBe(0);
    expect(sha256File(out)).toBe(sha256File(img));
  });

  it('repeated chunks inside one image are stored once', async () => {
    const block = randomBytes(64 << 10);
    const img = makeSparse(join(work, `rep-${kind}.img`), 2 << 20, []);
    const fd = openSync(img, 'r+');
    for (let i = 0; i < 8; i++) writeSync(fd, block, 0, block.length, i * (128 << 10));
    closeSync(fd);
    const { out, pushed } = await roundTrip(img, where(kind, `rep-${kind}`), { chunkSizeBytes: 64 << 10 });
    expect(pushed.config.stats.uniqueChunks).toBe(1);
    expect(sha256File(out)).toBe(sha256File(img));
  });
});

describe('dedup against what the target holds', () => {
  it('pushing the same image twice uploads no pack the second time', async () => {
    const img = makeSparse(join(work, 'dedup.img'), 4 << 20, [{ offset: 0, length: 1 << 20 }, { offset: 3 << 20, length: 500_000 }]);
    const ref = parseRef(`${bed.registry.host}/dedup/same:v1`);
    const target = await targets.open(ref);
    const first = await pushDisk({ file: img, target, tag: 'v1', pool: bed.pool, packSizeBytes: 256 << 10, chunkSizeBytes: 64 << 10 });
    expect(first.uploadedPacks).toBeGreaterThan(1);
    const second = await pushDisk({ file: img, target, tag: 'v1', pool: bed.pool, packSizeBytes: 256 << 10, chunkSizeBytes: 64 << 10 });
    expect(second.uploadedPacks).toBe(0);
    expect(second.uploadedBytes).toBe(0);
    expect(second.manifest.digest).toBe(first.manifest.digest);
  });

  it('an image differing in k chunks uploads about k chunks', async () => {
    const chunk = 64 << 10;
    const base = makeSparse(join(work, 'k-base.img'), 8 << 20, Array.from({ length: 100 }, (_, i) => ({ offset: i * chunk, length: chunk })));
    const changed = join(work, 'k-changed.img');
    copyFileSync(base, changed);
    const k = 5;
    const fd = openSync(changed, 'r+');
    for (let i = 0; i < k; i++) writeSync(fd, randomBytes(100), 0, 100, (10 + i * 17) * chunk + 5);
    closeSync(fd);
    const ref = parseRef(`${bed.registry.host}/dedup/k:v1`);
    const target = await targets.open(ref);
    await pushDisk({ file: base, target, tag: 'v1', pool: bed.pool, chunkSizeBytes: chunk, compression: 'none' });
    const second = await pushDisk({ file: changed, target, tag: 'v1', pool: bed.pool, chunkSizeBytes: chunk, compression: 'none' });
    expect(second.newChunks).toBe(k);
    expect(second.reusedChunks).toBe(100 - k);
    expect(second.uploadedBytes).toBe(k * chunk);
    const disk = await openDiskArtifact(target, 'v1');
    const out = join(work, 'k-out.img');
    await pullDisk({ target, disk, outFile: out, pool: bed.pool });
    expect(sha256File(out)).toBe(sha256File(changed));
  });
});

describe('copy', () => {
  it('between two repositories of one registry mounts blobs instead of sending them', async () => {
    const img = makeSparse(join(work, 'mount.img'), 2 << 20, [{ offset: 0, length: 600_000 }]);
    const src = await targets.open(parseRef(`${bed.registry.host}/mount/src:v1`));
    await pushDisk({ file: img, target: src, tag: 'v1', pool: bed.pool });
    const dst = await targets.open(parseRef(`${bed.registry.host}/mount/dst:v1`));
    const { copyImage } = await import('../src/oci/copy.js');
    const result = await copyImage({ src, srcReference: 'v1', dst, dstTag: 'v1' });
    expect(result.mountedBlobs).toBeGreaterThanOrEqual(3); // config, index, pack
    expect(result.copiedBlobs).toBe(0);
    const out = join(work, 'mount-out.img');
    await pullDisk({ target: dst, disk: await openDiskArtifact(dst, 'v1'), outFile: out, pool: bed.pool });
    expect(sha256File(out)).toBe(sha256File(img));
    const again = await copyImage({ src, srcReference: 'v1', dst, dstTag: 'v1' });
    expect(again.skippedBlobs).toBe(result.mountedBlobs);
  });
});

describe('progress', () => {
  it('--progress=json prints JSON lines for push and pull; quiet by default off a terminal', async () => {
    const { main } = await import('../src/cli/main.js');
    const { captureIO } = await import('./helpers/cli.js');
    const img = makeSparse(join(work, 'progress.img'), 4 << 20, [{ offset: 0, length: 2 << 20 }]);
    const ref = `oci:${join(work, 'progress-layout')}:v1`;
    const io = captureIO();
    expect(await main(['push', img, ref, '--progress=json'], io), io.err).toBe(0);
    const events = io.err.trim().split('\n').map((l) => JSON.parse(l) as { op: string; phase: string; doneBytes: number; totalBytes: number });
    expect(events.length).toBeGreaterThan(1);
    expect(events.every((e) => e.op === 'push' && e.totalBytes === 4 << 20)).toBe(true);
    expect(events.at(-1)?.phase).toBe('done');
    const io2 = captureIO();
    expect(await main(['pull', ref, join(work, 'progress-out.img'), '--progress=json'], io2), io2.err).toBe(0);
    expect(io2.err.trim().split('\n').map((l) => (JSON.parse(l) as { op: string }).op).every((op) => op === 'pull')).toBe(true);
    const quiet = captureIO();
    expect(await main(['pull', ref, join(work, 'progress-out2.img')], quiet)).toBe(0);
    expect(quiet.err).toBe('');
  });
});

describe('a block device', () => {
  it('a loop device pushes with its size from sysfs and pulls back byte for byte', async (ctx) => {
    const img = makeSparse(join(work, 'blockdev.img'), 4 << 20, [{ offset: 0, length: 1 << 20 }, { offset: 3 << 20, length: 512 << 10 }]);
    let dev: string;
    try {
      dev = execFileSync('losetup', ['--find', '--show', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    } catch (err) {
      ctx.skip(`cannot attach a loop device here (needs root and /dev/loop-control): ${(err as Error).message.split('\n')[0]}`);
      return;
    }
    try {
      expect(await checkImageFile(dev)).toBe(4 << 20);
      const { out, pushed } = await roundTrip(dev, `oci:${join(work, 'blockdev-layout')}:v1`);
      expect(pushed.config.sizeBytes).toBe(4 << 20);
      expect(sha256File(out)).toBe(sha256File(img));
    } finally {
      execFileSync('losetup', ['--detach', dev]);
    }
  });
});
