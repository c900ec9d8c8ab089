import { SlipwayError } from '../errors.js';
import { describeDisk, openDiskArtifact, openDiskFromManifest, type DiskArtifact } from '../disk/artifact.js';
import { ARTIFACT_TYPE_MEMORY_SNAPSHOT, isMemorySnapshotManifest, loadMemorySnapshot, type LoadedMemorySnapshot } from '../disk/memory-snapshot.js';
import { checkImageFile, pushDisk } from '../disk/push.js';
import { checkBootProfile, copyBootProfile, fetchBootProfile } from '../cache/boot-profile.js';
import { inheritBootProfile } from '../cache/profile-inheritance.js';
import { checkChunkSize } from '../disk/format.js';
import { explainUnreadable } from './explain-unreadable.js';
import { pullDisk } from '../disk/pull.js';
import { copyImage } from '../oci/copy.js';
import { withTargets } from '../oci/open.js';
import { DEFAULT_TAG, formatRef, parseRef, refReference } from '../oci/ref.js';
import { createProgress } from '../util/progress.js';
import { WorkerPool } from '../workers/pool.js';
import { parseCommand, parseNonNegativeInt, parseSize, progressMode, STORE_OPTIONS, type CommandIO, type CommandSpec } from './args.js';

const USAGE = {
  push: 'slipway push <image-file> <ref> [--chunk-size 512K] [--compression zstd|none] [--level N] [--pack-size 8M] [--dedup-from <ref>]... [--plain-http] [--progress MODE]',
  pull: 'slipway pull <ref> <out-file> [--plain-http] [--progress MODE]',
  inspect: 'slipway inspect <ref> [--plain-http]',
  copy: 'slipway copy <src-ref> <dst-ref> [--plain-http] [--progress MODE]',
} as const;

async function withPool<T>(fn: (pool: WorkerPool) => Promise<T>): Promise<T> {
  const pool = new WorkerPool();
  try {
    return await fn(pool);
  } finally {
    await pool.close();
  }
}

export async function pushCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parseCommand('push', argv, {
    ...STORE_OPTIONS,
    'chunk-size': { type: 'string' },
    'pack-size': { type: 'string' },
    compression: { type: 'string' },
    level: { type: 'string' },
    'dedup-from': { type: 'string', multiple: true },
  }, { min: 2, max: 2, usage: USAGE.push });
  const [file, refText] = positionals as [string, string];
  const ref = parseRef(refText);
  if (ref.digest) throw new SlipwayError('INVALID_REFERENCE', `push needs a tag, not a digest: ${refText}`);
  const compression = values.compression ?? 'zstd';
  if (compression !== 'zstd' && compression !== 'none') throw new SlipwayError('INVALID_ARGUMENT', `--compression must be zstd or none (got ${compression})`);
  const chunkSizeBytes = values['chunk-size'] ? parseSize(values['chunk-size'], '--chunk-size') : undefined;
  const packSizeBytes = values['pack-size'] ? parseSize(values['pack-size'], '--pack-size') : undefined;
  const zstdLevel = values.level ? parseNonNegativeInt(values.level, '--level') : undefined;
  if (zstdLevel !== undefined && (zstdLevel < 1 || zstdLevel > 22)) throw new SlipwayError('INVALID_ARGUMENT', `--level must be a zstd level from 1 to 22 (got ${zstdLevel})`);
  // Refuse bad input before anything is created at the destination (an oci: layout directory).
  if (chunkSizeBytes !== undefined) checkChunkSize(chunkSizeBytes);
  await checkImageFile(file);
  const progress = createProgress(progressMode(values.progress), io.stderr);
  const result = await withTargets({ plainHttp: values['plain-http'] === true }, async (targets) => {
    const target = await targets.open(ref, { createLayout: true });
    const dedupFrom: DiskArtifact[] = [];
    for (const d of values['dedup-from'] ?? []) {
      const dref = parseRef(d);
      dedupFrom.push(await openDiskArtifact(await targets.open(dref), refReference(dref)));
    }
    const pushed = await withPool((pool) => pushDisk({
      file, target, tag: ref.tag ?? DEFAULT_TAG, pool, compression, dedupFrom,
      ...(chunkSizeBytes !== undefined ? { chunkSizeBytes } : {}),
      ...(packSizeBytes !== undefined ? { packSizeBytes } : {}),
      ...(zstdLevel !== undefined ? { zstdLevel } : {}),
      ...(progress.onProgress ? { onProgress: progress.onProgress } : {}),
    }));
    // the new version boots with the profile of the version it shares its chunks with
    const inherited = await inheritBootProfile(target, pushed, pushed.dedupedAgainst).catch((err: unknown) => {
      io.stderr.write(`slipway push: warning: the disk is pushed, but giving it the boot profile of an earlier version failed: ${err instanceof Error ? err.message : String(err)}\n`);
      return undefined;
    });
    return { ...pushed, inherited };
  });
  progress.finish();
  const { inherited } = result;
  io.stdout.write(`${JSON.stringify({
    reference: formatRef({ ...ref, tag: ref.tag ?? DEFAULT_TAG }), digest: result.manifest.digest, sizeBytes: result.config.sizeBytes,
    chunks: result.config.chunkCount, zeroChunks: result.config.stats.zeroChunks, newChunks: result.newChunks, reusedChunks: result.reusedChunks,
    uploadedPacks: result.uploadedPacks, uploadedBytes: result.uploadedBytes, storedBytes: result.config.stats.storedBytes,
    ...(inherited ? { bootProfile: { inheritedFrom: inherited.from, chunks: inherited.chunks, unchangedChunks: inherited.unchangedChunks } } : {}),
  })}\n`);
  return 0;
}

export async function pullCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parseCommand('pull', argv, { ...STORE_OPTIONS }, { min: 2, max: 2, usage: USAGE.pull });
  const [refText, outFile] = positionals as [string, string];
  const ref = parseRef(refText);
  const progress = createProgress(progressMode(values.progress), io.stderr);
  const result = await withTargets({ plainHttp: values['plain-http'] === true }, async (targets) => {
    const target = await targets.open(ref);
    const disk = await openDiskArtifact(target, refReference(ref)).catch((err: unknown) => explainUnreadable(err, target, ref));
    return withPool((pool) => pullDisk({ target, disk, outFile, pool, ...(progress.onProgress ? { onProgress: progress.onProgress } : {}) }));
  });
  progress.finish();
  io.stdout.write(`${JSON.stringify({ file: outFile, ...result })}\n`);
  return 0;
}

export async function inspectCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parseCommand('inspect', argv, { 'plain-http': { type: 'boolean' } }, { min: 1, max: 1, usage: USAGE.inspect });
  const ref = parseRef(positionals[0] as string);
  const summary = await withTargets({ plainHttp: values['plain-http'] === true }, async (targets) => {
    const target = await targets.open(ref);
    const reference = refReference(ref);
    const fetched = await target.fetchManifest(reference).catch((err: unknown) => explainUnreadable(err, target, ref));
    if (isMemorySnapshotManifest(fetched.body)) return describeMemorySnapshot(await loadMemorySnapshot(target, reference, fetched));
    const disk = await openDiskFromManifest(target, reference, fetched.descriptor, fetched.body);
    // its boot profile, as a boot would find it: absent (null), or how many chunks and from where
    let bootProfile: Record<string, unknown> | null;
    try {
      const raw = await fetchBootProfile(target, disk.manifestDescriptor.digest);
      const p = raw === undefined ? undefined : checkBootProfile(raw, disk);
      bootProfile = p ? { chunks: p.chunks.length, ...(typeof p.inheritedFrom === 'string' ? { inheritedFrom: p.inheritedFrom } : {}) } : null;
    } catch (err) {
      // a profile that cannot be used is said, not fatal: the disk is described all the same
      bootProfile = { error: err instanceof Error ? err.message : String(err) };
    }
    return { ...describeDisk(disk), bootProfile };
  });
  io.stdout.write(`${JSON.stringify({ ...summary, reference: formatRef(ref) }, null, 2)}\n`);
  return 0;
}

/** `inspect` of a memory snapshot: what it is, the VM shape it restores into, its disk and RAM. */
function describeMemorySnapshot(s: LoadedMemorySnapshot): Record<string, unknown> {
  return {
    digest: s.manifest.digest, artifactType: ARTIFACT_TYPE_MEMORY_SNAPSHOT, createdAt: s.config.createdAt, shape: s.config.shape,
    disk: s.config.disk.digest, ram: s.config.ram.digest, parent: s.config.parent ?? null,
    deviceStateBytes: s.state.reduce((n, l) => n + l.descriptor.size, 0),
  };
}

export async function copyCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parseCommand('copy', argv, { ...STORE_OPTIONS }, { min: 2, max: 2, usage: USAGE.copy });
  const src = parseRef(positionals[0] as string);
  const dst = parseRef(positionals[1] as string);
  if (dst.digest && !dst.tag && src.digest !== dst.digest && src.digest) throw new SlipwayError('INVALID_REFERENCE', 'destination digest differs from the source digest');
  const progress = createProgress(progressMode(values.progress), io.stderr);
  const result = await withTargets({ plainHttp: values['plain-http'] === true }, async (targets) => {
    const srcTarget = await targets.open(src);
    const dstTarget = await targets.open(dst, { createLayout: true });
    const dstTag = dst.tag ?? (dst.digest ? undefined : (src.tag ?? DEFAULT_TAG));
    const copied = await copyImage({
      src: srcTarget, srcReference: refReference(src), dst: dstTarget,
      ...(dstTag !== undefined ? { dstTag } : {}),
      ...(progress.onProgress ? { onProgress: progress.onProgress } : {}),
    });
    // a disk's boot profile goes with it (a referrer the copy of the disk alone would leave behind)
    return { ...copied, bootProfile: await copyBootProfile(srcTarget, dstTarget, copied.descriptor.digest) };
  });
  progress.finish();
  io.stdout.write(`${JSON.stringify({ digest: result.descriptor.digest, copiedBlobs: result.copiedBlobs, mountedBlobs: result.mountedBlobs, skippedBlobs: result.skippedBlobs, copiedBytes: result.copiedBytes, bootProfile: result.bootProfile })}\n`);
  return 0;
}

export const DISK_COMMANDS: CommandSpec[] = [
  { name: 'push', help: [{ usage: USAGE.push, summary: 'push a raw disk image as a chunked, compressed OCI artifact' }], run: pushCommand },
  { name: 'pull', help: [{ usage: USAGE.pull, summary: 'pull a disk into a sparse raw file' }], run: pullCommand },
  { name: 'inspect', help: [{ usage: USAGE.inspect, summary: 'describe a disk artifact (with its boot profile) or a memory snapshot (JSON)' }], run: inspectCommand },
  { name: 'copy', help: [{ usage: USAGE.copy, summary: 'copy an artifact between registries and layouts' }], run: copyCommand },
];
