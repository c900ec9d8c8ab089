/**
 * Memory snapshots in the daemon (docs/snapshots.md): pause a running VM into the registry, and
 * restore one on any host.
 *
 * Taking one: stop the vCPUs; copy the disk's dirty chunks aside (the overlay is what the guest
 * wrote, completed I/O included); save the device state (QEMU, RAM left out); copy the RAM file
 * aside on tmpfs (sparse); resume. The VM is paused only for those copies. Then push the disk
 * delta (`<tag>.disk`), the RAM image (`<tag>.ram`, chunked like a disk, deduplicated against the
 * parent snapshot's RAM and the repository's) and last the snapshot's own manifest (`<tag>`). A
 * failed push leaves `<tag>` as it was and the VM running.
 *
 * Restoring: check the VM shape, fetch the RAM chunks through the host chunk cache (verified,
 * shared between VMs) into a fresh sparse RAM file, start QEMU paused with `-incoming defer` and
 * the same machine, load the device state, continue. The disk is the snapshot's disk through
 * slipway-blk as for any boot.
 *
 * Cloud Hypervisor (src/vmm/ch-snapshot.ts) goes through the same steps with its own state: its
 * vm.snapshot writes the device state (state.json, config.json) and the RAM image (memory-ranges)
 * into the staging directory, so the RAM is not copied while paused; a restore writes
 * memory-ranges whole into the VM's directory and CH loads it, on demand where it can.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ChunkCache } from '../cache/chunk-cache.js';
import type { DiskArtifact } from '../disk/artifact.js';
import { HOLE } from '../disk/format.js';
import {
  checkMemorySnapshotTag, diskTag, loadMemorySnapshot, pushMemorySnapshot, ramTag,
  type LoadedMemorySnapshot, type MemorySnapshotConfig, type VmShape,
} from '../disk/memory-snapshot.js';
import { pushDisk } from '../disk/push.js';
import { pushSnapshot, readDirtyBitmap, removeStaging, stageDirtyChunks, type DirtyBitmap } from '../disk/snapshot.js';
import { SlipwayError, fromFsError, isSlipwayError } from '../errors.js';
import type { AgentClient } from '../guest/agent-client.js';
import { formatRef, refReference, type ImageRef } from '../oci/ref.js';
import { withEmbeddedData } from '../oci/digest.js';
import type { FetchedManifest, Target } from '../oci/store.js';
import type { ServedDisk } from '../serve/backend.js';
import { lazyMemorySupport, RAM_FILL_CONCURRENCY, serveRam, type ServedRam } from '../serve/ram-backend.js';
import { pushBootProfile, writeLocalProfile } from '../cache/boot-profile.js';
import type { Logger } from '../util/log.js';
import { logProgress } from '../util/progress.js';
import { guestKernelDigest } from '../vmm/accel.js';
import { CloudHypervisorDriver } from '../vmm/cloud-hypervisor.js';
import { CH_SNAPSHOT_FILES } from '../vmm/ch-snapshot.js';
import type { RunningVm, VmmDriver, VmSpec } from '../vmm/driver.js';
import type { MemorySnapshotResult, RestoreFigures } from './schemas.js';
import { detectAgentTransport, noHugepageEnv, noHugepageLibrary, qemuArgs, qemuBinary } from '../vmm/qemu.js';

const run = promisify(execFile);

/** RAM images are chunked finer than disks: an idle guest dirties pages all over its RAM. */
export const RAM_CHUNK_BYTES = 64 << 10;

/** Where a daemon VM's RAM lives: tmpfs, mapped shared by QEMU and the vhost-user backend. */
export function ramFileOf(vmId: string): string {
  return `/dev/shm/slipway-${vmId}.ram`;
}

/** A copy of VM `vmId`'s RAM that a memory snapshot stages (tmpfs: guest memory), one per snapshot. */
function stagingRamCopyOf(vmId: string): string {
  return `/dev/shm/slipway-staging-${vmId}-${randomBytes(4).toString('hex')}.ram`;
}

/**
 * Remove the staged RAM copies of the memory snapshots of VMs `vmIds` (`stagingRamCopyOf`) that a
 * daemon killed mid-snapshot left on tmpfs, where they would hold the guest's memory size until
 * the host reboots. Only for VMs whose snapshots nobody is taking (a daemon starting). Never
 * throws; a name that is not a plain file (another user's link, say) is only unlinked, never
 * followed.
 */
export async function removeStagedRamCopies(vmIds: readonly string[]): Promise<void> {
  const prefixes = vmIds.map((id) => `slipway-staging-${id}-`);
  const names = await readdir('/dev/shm').catch(() => [] as string[]);
  for (const name of names) {
    if (name.endsWith('.ram') && prefixes.some((p) => name.startsWith(p))) await rm(join('/dev/shm', name), { force: true }).catch(() => undefined);
  }
}

let qemuVersion: Promise<string> | undefined;

/**
 * The VM's shape as a restore must match it: machine, vCPUs, RAM, devices in order, VMM, kernel,
 * initramfs. Cloud Hypervisor's driver says its own (CloudHypervisorDriver.shape); QEMU's is read
 * from the arguments QEMU would get.
 */
export async function vmShape(spec: VmSpec, driver?: VmmDriver): Promise<VmShape> {
  if (driver instanceof CloudHypervisorDriver) return driver.shape(spec);
  qemuVersion ??= run(qemuBinary(), ['--version']).then((r) => /version (\S+)/.exec(r.stdout)?.[1] ?? 'unknown');
  const args = qemuArgs(spec, 'tcg', { agentTransport: detectAgentTransport(), guestCid: 3 });
  const devices = args.flatMap((a, i) => (args[i - 1] === '-device' ? [a.split(',')[0] as string] : []));
  const machine = args[args.indexOf('-machine') + 1]?.split(',')[0] ?? 'q35';
  return {
    vmm: 'qemu', vmmVersion: await qemuVersion, machine, cpus: spec.cpus, memoryMiB: spec.memoryMiB, devices,
    kernel: await guestKernelDigest(spec.kernel.bzImage), initramfs: await guestKernelDigest(spec.initramfs),
  };
}

export interface SnapshotVm {
  id: string;
  vm: RunningVm;
  served: ServedDisk;
  spec: VmSpec;
  /** the memory snapshot this VM was restored from, or last snapshotted into (its RAM is the dedup base) */
  parent?: { target: Target; config: MemorySnapshotConfig; digest: string };
  /** lazy memory: the server of the VM's RAM; its overlay holds what changed since the restore */
  ram?: ServedRam;
  /** the driver that started it (its shape: vmShape); absent: QEMU's */
  driver?: VmmDriver;
}

/**
 * Take a memory snapshot of a running VM into `ref` (a tag). Errors: CONFLICT when the VM's VMM
 * offers no memory operations (a QEMU whose RAM is not a file, booted by an older daemon) or its
 * disk is read-only; VMM_ERROR from the VMM; the registry's errors (the tag is then as it was, the
 * VM running).
 */
export async function takeMemorySnapshot(deps: { cache: ChunkCache; logger: Logger; stagingDir: string }, v: SnapshotVm, parsed: ImageRef & { tag: string }): Promise<MemorySnapshotResult & { parent: NonNullable<SnapshotVm['parent']> }> {
  checkMemorySnapshotTag(parsed.tag);
  const ops = v.vm.memory;
  if (!ops) throw new SlipwayError('CONFLICT', `VM ${v.id} keeps its RAM in anonymous memory (booted before memory snapshots): snapshot its disk only`);
  const overlayDir = v.served.overlayDir;
  if (!overlayDir) throw new SlipwayError('CONFLICT', `VM ${v.id} has a read-only disk`);
  const log = deps.logger.child({ vm: v.id, snapshot: formatRef(parsed) });
  const base = v.served.disk.artifact;
  const shape = await vmShape(v.spec, v.driver);
  if (shape.vmm !== ops.vmm) throw new SlipwayError('VMM_ERROR', `VM ${v.id} runs under ${ops.vmm}, but its shape was read for ${shape.vmm}`);
  const stem = join(deps.stagingDir, `${v.id}-${randomBytes(4).toString('hex')}`);
  const diskStaging = `${stem}.disk`;
  // the VMM's saved state (QEMU: its device state; Cloud Hypervisor: its RAM image too)
  const stateDir = `${stem}.state`;
  const ramCopy = stagingRamCopyOf(v.id);
  let ramImage = ramCopy;
  let stateFiles: string[] = [];
  let ramDirty: DirtyBitmap | undefined;
  const t0 = performance.now();
  try {
    await ops.pause();
    let tResumed: number;
    let dirty;
    try {
      dirty = await readDirtyBitmap(join(overlayDir, 'dirty'), base.index);
      await stageDirtyChunks(join(overlayDir, 'data'), dirty, diskStaging);
      await mkdir(stateDir, { mode: 0o700 });
      const saved = await ops.save(stateDir);
      stateFiles = saved.files;
      if (!saved.ram.live) {
        // written by the VMM (Cloud Hypervisor's memory-ranges): the VM's no more, nothing to copy
        ramImage = saved.ram.file;
      } else if (v.ram) {
        // lazy memory: dirty pages written back into the overlay, whose dirty chunks are the
        // RAM changed since the restore (the rest is the restored image's, unchanged)
        await v.ram.flush();
        ramDirty = await readDirtyBitmap(join(v.ram.overlayDir, 'dirty'), v.ram.disk.artifact.index);
        await stageDirtyChunks(join(v.ram.overlayDir, 'data'), ramDirty, ramCopy);
      } else {
        // sparse: only the pages the guest has touched are copied (SEEK_DATA/SEEK_HOLE on tmpfs)
        await run('cp', ['--sparse=always', '--reflink=never', saved.ram.file, ramCopy]);
      }
    } finally {
      await ops.resume();
      tResumed = performance.now();
    }
    log.info('memory snapshot staged; vm running again', { pausedMs: Math.round(tResumed - t0), dirtyChunks: dirty.chunks.length });
    const ramBytes = (await stat(ramImage)).size;
    if (!v.ram && ramBytes !== shape.memoryMiB * (1 << 20)) throw new SlipwayError('VMM_ERROR', `VM ${v.id}: its RAM image is ${ramBytes} bytes, not the ${shape.memoryMiB} MiB it has (hotplugged memory or memory zones are not snapshotted)`);
    const target = await deps.cache.targets.open(parsed);
    const diskPush = await pushSnapshot({
      base, baseTarget: v.served.disk.origin, staging: diskStaging, dirty, target, tag: diskTag(parsed.tag), pool: deps.cache.pool,
      onProgress: logProgress((m, f) => log.info(m, f)),
    });
    let ramPush;
    const parentRam = v.parent ? await openRamArtifact(deps.cache, v.parent.target, v.parent.config).catch(() => undefined) : undefined;
    try {
    if (v.ram && ramDirty) {
      // a delta of the image the VM was restored from, as a disk snapshot is of its base; what
      // changed since is deduplicated against the last snapshot and the repository
      ramPush = await pushSnapshot({
        base: v.ram.disk.artifact, baseTarget: v.ram.disk.origin, staging: ramCopy, dirty: ramDirty, target, tag: ramTag(parsed.tag), pool: deps.cache.pool,
        repositoryDedup: true, ...(parentRam ? { dedupFrom: [parentRam.artifact] } : {}),
        onProgress: logProgress((m, f) => log.info(m, f)),
      });
    } else {
      ramPush = await pushDisk({
        file: ramImage, target, tag: ramTag(parsed.tag), pool: deps.cache.pool, chunkSizeBytes: RAM_CHUNK_BYTES,
        ...(parentRam ? { dedupFrom: [parentRam.artifact] } : {}),
        onProgress: logProgress((m, f) => log.info(m, f)),
      });
    }
    } finally {
      await parentRam?.close();
    }
    const deviceState = await Promise.all(stateFiles.map((f) => readFile(f)));
    const config: MemorySnapshotConfig = {
      // the disk and RAM manifests ride in the config (which rides in the snapshot's manifest): a
      // restore has them with its first round trip
      formatVersion: 1, shape, disk: withEmbeddedData(diskPush.manifest, diskPush.manifestBody), ram: withEmbeddedData(ramPush.manifest, ramPush.manifestBody), createdAt: new Date().toISOString(),
      ...(v.parent ? { parent: v.parent.digest } : {}),
    };
    const manifest = await pushMemorySnapshot(target, parsed.tag, config, deviceState);
    const tDone = performance.now();
    const out = {
      ref: formatRef(parsed), digest: manifest.digest, disk: diskPush.manifest.digest, ram: ramPush.manifest.digest,
      ramUploadedBytes: ramPush.uploadedBytes, diskUploadedBytes: diskPush.uploadedBytes, deviceStateBytes: deviceState.reduce((n, b) => n + b.byteLength, 0),
      timings: { pausedMs: Math.round(tResumed - t0), pushMs: Math.round(tDone - tResumed), totalMs: Math.round(tDone - t0) },
      parent: { target, config, digest: manifest.digest },
    };
    log.info('memory snapshot pushed', { ...out, parent: undefined });
    return out;
  } finally {
    await Promise.all([removeStaging(diskStaging), rm(stateDir, { recursive: true, force: true }), removeStaging(ramCopy)]);
  }
}

/** The RAM image of a snapshot, opened through the chunk cache (by digest: it cannot move). */
async function openRamArtifact(cache: ChunkCache, target: Target, config: MemorySnapshotConfig): Promise<{ artifact: DiskArtifact; close(): Promise<void> }> {
  const disk = await cache.openDisk(`${target.name}@${config.ram.digest}`, { useProfile: false });
  return { artifact: disk.artifact, close: () => disk.close() };
}

export interface RestorePlan {
  snapshot: LoadedMemorySnapshot;
  /** the disk to serve: the snapshot's disk manifest, by digest */
  diskRef: string;
  /** the saved state for MemorySnapshotOps.restore: the state layers' files, written to the VM's work directory */
  stateDir: string;
  /**
   * QEMU: the file it maps as guest RAM, a FUSE file served lazily or a tmpfs file loaded whole;
   * Cloud Hypervisor: its memory-ranges in `stateDir`, written whole, which CH loads itself
   */
  ramFile: string;
  /** lazy memory: the server behind ramFile (undefined when the RAM was loaded whole) */
  ram?: ServedRam;
  /** eager: the RAM chunks fetched from the registry, and their size */
  eagerFetched?: { chunks: number; chunkBytes: number };
  target: Target;
}

/** A memory snapshot's manifest and config, checked, where it lives, and the disk it names (by digest). */
export interface OpenedMemorySnapshot {
  target: Target;
  snapshot: LoadedMemorySnapshot;
  diskRef: string;
}

/** How a restore loads RAM: `lazy` (on demand over FUSE, where the host allows it), `eager` (whole, before resuming). */
export type MemoryLoading = 'lazy' | 'eager';

/**
 * A memory snapshot, checked (openMemorySnapshot: NOT_A_SLIPWAY_DISK when `parsed` is not one,
 * CORRUPT_INDEX, the registry's errors); then what a restore needs (prepareRestore): its device
 * state into `workDir`, and its RAM.
 * Lazy (the default where `lazyMemorySupport()` holds): the RAM image is served on demand by
 * slipway-ramfs, its working-set profile (if the snapshot has one) fetched first in profile order;
 * eager: every chunk fetched through the chunk cache and written into a fresh sparse tmpfs file
 * before QEMU starts. A Cloud Hypervisor snapshot is always loaded whole, into memory-ranges in
 * `workDir`: CH reads it itself, on demand where it can (its `OnDemand` restore mode), so slipway's
 * lazy memory does not apply. Errors: NOT_A_SLIPWAY_DISK, CORRUPT_INDEX, DIGEST_MISMATCH (a
 * corrupted RAM pack: eager at once; lazy when the guest touches it, failing the restore before
 * its first exec), INVALID_ARGUMENT (`lazy` asked of a Cloud Hypervisor snapshot), the registry's.
 * On an error nothing is left behind.
 */
export async function openMemorySnapshot(cache: ChunkCache, parsed: ImageRef, manifest?: FetchedManifest): Promise<OpenedMemorySnapshot> {
  const target = await cache.targets.open(parsed);
  // `manifest`: the one an attempt to open the reference as a disk resolved (not asked for again)
  const snapshot = await loadMemorySnapshot(target, refReference(parsed), manifest, cache.blobReader(target));
  // the disk and RAM manifests the config embeds go into the metadata cache, where opening them
  // by digest finds them
  await cache.keepEmbedded([snapshot.config.disk, snapshot.config.ram]);
  return { target, snapshot, diskRef: `${target.name}@${snapshot.config.disk.digest}` };
}

/** Whether this process has said that QEMU gets no libslipway-nohugepage.so (once is enough). */
let noHugepageWarned = false;

/**
 * Whether `opened` restores with lazy memory (slipway-ramfs) when `loading` is asked: QEMU
 * snapshots, `lazy` asked or nothing asked where the host allows it (lazyMemorySupport).
 */
export function restoresLazily(opened: OpenedMemorySnapshot, loading?: MemoryLoading): boolean {
  return opened.snapshot.config.shape.vmm !== 'cloud-hypervisor' && (loading === 'lazy' || (loading === undefined && lazyMemorySupport().ok));
}

export async function prepareRestore(cache: ChunkCache, opened: OpenedMemorySnapshot, vmId: string, workDir: string, log: Logger, loading?: MemoryLoading): Promise<RestorePlan> {
  const { target, snapshot } = opened;
  const ch = snapshot.config.shape.vmm === 'cloud-hypervisor';
  if (ch && loading === 'lazy') throw new SlipwayError('INVALID_ARGUMENT', "memoryLoading: 'lazy' is slipway-ramfs under QEMU; a Cloud Hypervisor snapshot's RAM is fetched whole and Cloud Hypervisor loads it on demand itself", { context: { field: 'memoryLoading' } });
  const stateDir = workDir;
  const lazy = restoresLazily(opened, loading);
  const ramRef = `${target.name}@${snapshot.config.ram.digest}`;
  const want = snapshot.config.shape.memoryMiB * (1 << 20);
  const base = { snapshot, diskRef: opened.diskRef, stateDir, target };
  // the device state is fetched while the RAM is made ready
  const blobs = cache.blobReader(target);
  const state = Promise.all(snapshot.state.map(async (layer) => writeFile(join(stateDir, layer.file), await blobs.fetchBlob(layer.descriptor), { mode: 0o600 })));
  state.catch(() => undefined);
  if (lazy) {
    // (the working-set profile is looked up while slipway-ramfs starts)
    const ram = await cache.openDisk(ramRef, { useProfile: true, speculate: false, memoryTier: false, profileInBackground: true });
    try {
      if (ram.artifact.index.sizeBytes !== want) throw new SlipwayError('CORRUPT_INDEX', `memory snapshot ${snapshot.manifest.digest}: its RAM image is ${ram.artifact.index.sizeBytes} bytes, its shape says ${want}`);
      // slipway-ramfs starts and mounts while the device state comes
      const [up, stateIn] = await Promise.allSettled([serveRam({ cache, disk: ram, workDir, overlayDir: ramOverlayOf(vmId) }), state]);
      if (stateIn.status === 'rejected') {
        if (up.status === 'fulfilled') await up.value.close();
        throw stateIn.reason;
      }
      if (up.status === 'rejected') throw up.reason;
      const served = up.value;
      log.info('restore: RAM served on demand', { chunks: ram.artifact.index.chunkCount });
      if (!noHugepageWarned && Object.keys(noHugepageEnv(served.file)).length === 0) {
        noHugepageWarned = true;
        log.warn('QEMU will read 4 MiB around every fault of restored RAM: libslipway-nohugepage.so is not built, or its path has a space or colon (make -C vhost-user-blk; docs/snapshots.md)', { library: noHugepageLibrary() });
      }
      return { ...base, ramFile: served.file, ram: served };
    } catch (err) {
      await ram.close();
      throw err;
    }
  }
  const ramFile = ch ? join(stateDir, CH_SNAPSHOT_FILES.memory) : ramFileOf(vmId);
  let eagerFetched: RestorePlan['eagerFetched'];
  try {
    await state;
    const ram = await cache.openDisk(ramRef, { useProfile: false });
    try {
      if (ram.artifact.index.sizeBytes !== want) throw new SlipwayError('CORRUPT_INDEX', `memory snapshot ${snapshot.manifest.digest}: its RAM image is ${ram.artifact.index.sizeBytes} bytes, its shape says ${want}`);
      const t0 = performance.now();
      await ram.prefetch({ priority: 'demand', concurrency: 8 });
      await writeRamFile(ram, ramFile);
      log.info('restore: RAM image written', { ms: Math.round(performance.now() - t0), chunks: ram.artifact.index.chunkCount, fetched: ram.stats.tier2Chunks });
      eagerFetched = { chunks: ram.stats.tier2Chunks, chunkBytes: ram.artifact.index.chunkSizeBytes };
    } finally {
      await ram.close();
    }
  } catch (err) {
    await rm(ramFile, { force: true });
    throw err;
  }
  return { ...base, ramFile, ...(eagerFetched ? { eagerFetched } : {}) };
}

/**
 * How long a lazily restored VM's working set is recorded when no exec comes: the chunks it
 * touched in that time are its working set, and the rest of its RAM then loads.
 */
export const WORKING_SET_WINDOW_MS = 10_000;

/**
 * After a lazy restore's first exec (`firstExec` resolves 'exec' when it has answered, 'gone' when
 * the VM went first; WORKING_SET_WINDOW_MS without either counts as an exec): store the chunks it
 * touched as the snapshot's working-set profile (a boot profile of its RAM image, docs/cache.md;
 * kept on this host where the registry refuses it), unless it restored with one; then load the
 * rest of the RAM into tier 1 at background priority, so the VM no longer needs the registry (or
 * this daemon) to touch a page. Failures are logged, never thrown: the VM runs on.
 */
export function afterLazyRestore(plan: RestorePlan, cacheDir: string, log: Logger, firstExec: Promise<'exec' | 'gone'>): void {
  const ram = plan.ram;
  if (!ram) return;
  const work = async (): Promise<void> => {
    let timer: NodeJS.Timeout | undefined;
    const window = new Promise<'window'>((r) => {
      timer = setTimeout(() => r('window'), WORKING_SET_WINDOW_MS);
      timer.unref();
    });
    const why = await Promise.race([firstExec, window]);
    clearTimeout(timer);
    if (why === 'gone') return;
    // a restore that had a working-set profile to start with records none
    await ram.disk.profileSettled;
    if (ram.disk.openedWithProfile === undefined) {
      const { index } = ram.disk.artifact;
      // zero chunks are holes: nothing to fetch
      const chunks = (await ram.touched()).filter((n) => n < index.chunkCount && index.map[n] !== HOLE);
      if (chunks.length > 0) {
        const profile = { formatVersion: 1 as const, disk: ram.disk.digest, chunkSizeBytes: index.chunkSizeBytes, chunks };
        try {
          await pushBootProfile(plan.target, ram.disk.artifact.manifestDescriptor, profile);
          log.info('restore: working-set profile stored with the snapshot', { chunks: chunks.length, bytes: chunks.length * index.chunkSizeBytes });
        } catch (err) {
          // a registry that refuses it (read-only credentials): this host keeps it, as for boot profiles
          const path = await writeLocalProfile(cacheDir, profile);
          log.warn('could not store the working-set profile in the registry; keeping it on this host, where later restores use it', { path, error: (err as Error).message });
        }
      }
    }
    await ram.disk.fillInBackground({ concurrency: RAM_FILL_CONCURRENCY });
  };
  void work().catch((err: unknown) => log.warn('after a lazy restore: storing the working set or loading the rest of the RAM failed', { error: (err as Error).message }));
}

/** What a restore had loaded by now (its first exec): the create answer's `restore`. */
export async function restoreFigures(plan: RestorePlan): Promise<RestoreFigures> {
  if (!plan.ram) return { memoryLoading: 'eager', workingSetChunks: 0, ramChunksFetched: plan.eagerFetched?.chunks ?? 0, ramChunkBytes: plan.eagerFetched?.chunkBytes ?? RAM_CHUNK_BYTES };
  const { index } = plan.ram.disk.artifact;
  await plan.ram.disk.profileSettled;
  return {
    memoryLoading: 'lazy', workingSetChunks: plan.ram.disk.openedWithProfile?.chunks ?? 0, ramChunksFetched: plan.ram.disk.stats.tier2Chunks,
    ramChunkBytes: index.chunkSizeBytes, ramChunksTouched: (await plan.ram.touched().catch(() => [])).length,
  };
}

/** Where a lazily restored VM's RAM overlay lives: tmpfs, mode 0700 (guest memory). */
export function ramOverlayOf(vmId: string): string {
  return `/dev/shm/slipway-${vmId}.ram.d`;
}

/**
 * A fresh VM's RAM file, made before QEMU opens it so that it is the daemon's alone (mode 0600:
 * guest memory is no other local user's to read); QEMU sizes it.
 */
export async function createRamFile(path: string): Promise<void> {
  const fh = await open(path, 'wx', 0o600).catch((err: unknown) => {
    throw fromFsError(err, path, 'RAM file');
  });
  await fh.close();
}

/** Write every non-zero chunk of a RAM image at its offset in a new sparse file (mode 0600). */
async function writeRamFile(ram: Awaited<ReturnType<ChunkCache['openDisk']>>, path: string): Promise<void> {
  const { index } = ram.artifact;
  if (existsSync(path)) throw new SlipwayError('CONFLICT', `${path} exists: another VM's RAM`);
  const fh = await open(path, 'wx', 0o600).catch((err: unknown) => {
    throw fromFsError(err, path, 'RAM file');
  });
  try {
    await fh.truncate(index.sizeBytes);
    for (let n = 0; n < index.chunkCount; n++) {
      if (index.map[n] === HOLE) continue;
      const data = await ram.readChunk(n);
      await fh.write(data, 0, data.byteLength, n * index.chunkSizeBytes);
    }
  } finally {
    await fh.close();
  }
}

/** An agent's answer to a request it predates (a snapshot taken with an older agent). */
function unknownRequest(err: unknown): boolean {
  return isSlipwayError(err, 'AGENT_ERROR') && /unknown request type/.test((err as Error).message);
}

/**
 * For an agent older than a request: run `argv` in the guest instead. That the guest's own
 * program failed (or is missing) is logged, not thrown: the VM runs, only not quite as asked.
 */
async function runInstead(agent: Pick<AgentClient, 'exec'>, argv: string[], log: Logger): Promise<void> {
  const r = await agent.exec(argv).catch((err: unknown) => ({ exitCode: -1, signal: 0, stderr: Buffer.from((err as Error).message) }));
  if (r.exitCode !== 0 || r.signal !== 0) log.warn(`after a restore: the guest's agent predates this request, and ${argv[0]} failed`, { argv, exitCode: r.exitCode, signal: r.signal, stderr: r.stderr.toString().slice(0, 500) });
}

/**
 * Make a restored VM its own: its host name (`hostname`), and this host's time (it wakes with the
 * clock it was paused with, behind by however long the snapshot waited). vmgenid has already made
 * its kernel reseed its RNG. Both are set by the agent itself (a process started in a TCG guest
 * costs about 100 ms), in one round trip; an agent older than SET_HOSTNAME or SET_TIME (a snapshot
 * taken before them) runs `hostname` or `date -s @<seconds>` instead, and a failure of those is
 * logged on `log`. Errors: the agent's, for the requests themselves.
 */
export async function applyRestoredIdentity(agent: Pick<AgentClient, 'setHostname' | 'setTime' | 'exec'>, hostname: string, log: Logger): Promise<void> {
  await Promise.all([
    agent.setHostname(hostname).catch((err: unknown) => {
      if (!unknownRequest(err)) throw err;
      return runInstead(agent, ['hostname', hostname], log);
    }),
    agent.setTime().catch((err: unknown) => {
      if (!unknownRequest(err)) throw err;
      return runInstead(agent, ['date', '-s', `@${Math.round(Date.now() / 1000)}`], log);
    }),
  ]);
}
