/**
 * The memory-snapshot artifact (docs/snapshots.md): a VM paused into the registry.
 *
 * Three manifests in one repository, the last one written last:
 * - `<tag>.disk`: the VM's disk as a delta of the disk it booted from (a slipway disk artifact);
 * - `<tag>.ram`: the guest RAM image, stored in the disk format's chunk store (a slipway disk
 *   artifact of RAM size: zero chunks elided, sha256, zstd, packs, dedup within the image, against
 *   the repository's recent RAM images and the parent snapshot's);
 * - `<tag>`: artifactType `application/vnd.slipway.memory-snapshot.v1`, `subject` the disk
 *   manifest, one layer holding QEMU's device state (RAM left out: x-ignore-shared), and a config
 *   naming the disk and RAM manifests and the VM's shape. A restore refuses any other shape.
 */
import { SlipwayError } from '../errors.js';
import { sha256Digest } from '../oci/digest.js';
import type { Target } from '../oci/store.js';
import { MEDIA_TYPE_OCI_MANIFEST, type Descriptor, type ImageManifest } from '../oci/types.js';

export const ARTIFACT_TYPE_MEMORY_SNAPSHOT = 'application/vnd.slipway.memory-snapshot.v1';
export const MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG = 'application/vnd.slipway.memory-snapshot.config.v1+json';
export const MEDIA_TYPE_QEMU_DEVICE_STATE = 'application/vnd.slipway.qemu-device-state.v1';
/** Device state over this is refused (QEMU's is a few hundred KB with RAM left out). */
export const MAX_DEVICE_STATE_BYTES = 64 << 20;
const MAX_CONFIG_BYTES = 1 << 20;

/** What a restore must match exactly: the machine the memory image and device state came from. */
export interface VmShape {
  vmm: 'qemu';
  /** `qemu-system-x86_64 --version`'s version */
  vmmVersion: string;
  machine: string;
  cpus: number;
  memoryMiB: number;
  /** the device set, in QEMU's order (what the device state describes) */
  devices: string[];
  /** sha256 of the guest kernel (bzImage) and initramfs the VM booted */
  kernel: string;
  initramfs: string;
}

export interface MemorySnapshotConfig {
  formatVersion: 1;
  shape: VmShape;
  /** the disk snapshot (`<tag>.disk`) and the RAM image (`<tag>.ram`) manifests */
  disk: Descriptor;
  ram: Descriptor;
  /** the memory snapshot this VM was restored from, if any (its RAM is the dedup base) */
  parent?: string;
  createdAt: string;
}

export function diskTag(tag: string): string {
  return `${tag}.disk`;
}

export function ramTag(tag: string): string {
  return `${tag}.ram`;
}

/** Tags `<tag>.disk` and `<tag>.ram` must be valid OCI tags too: at most 128 characters. */
export function checkMemorySnapshotTag(tag: string): void {
  if (tag.length > 123) throw new SlipwayError('INVALID_ARGUMENT', `ref: a memory snapshot's tag may have at most 123 characters (it gets .disk and .ram siblings); ${tag} has ${tag.length}`, { context: { field: 'ref' } });
}

/**
 * Push the memory snapshot's own manifest (device state, config, subject the disk), tagged `tag`.
 * The disk and RAM manifests must be in `target` already.
 */
export async function pushMemorySnapshot(target: Target, tag: string, config: MemorySnapshotConfig, deviceState: Buffer): Promise<Descriptor> {
  const stateDesc: Descriptor = { mediaType: MEDIA_TYPE_QEMU_DEVICE_STATE, digest: sha256Digest(deviceState), size: deviceState.byteLength };
  const configBody = Buffer.from(JSON.stringify(config));
  const configDesc: Descriptor = { mediaType: MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG, digest: sha256Digest(configBody), size: configBody.byteLength };
  if (!(await target.blobExists(stateDesc.digest))) await target.pushBlob(stateDesc, deviceState);
  if (!(await target.blobExists(configDesc.digest))) await target.pushBlob(configDesc, configBody);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_OCI_MANIFEST,
    artifactType: ARTIFACT_TYPE_MEMORY_SNAPSHOT,
    config: configDesc,
    layers: [stateDesc],
    subject: config.disk,
    annotations: { 'org.opencontainers.image.created': config.createdAt },
  };
  return target.pushManifest(Buffer.from(JSON.stringify(manifest)), MEDIA_TYPE_OCI_MANIFEST, tag);
}

export interface LoadedMemorySnapshot {
  manifest: Descriptor;
  config: MemorySnapshotConfig;
  deviceState: Descriptor;
}

function isDescriptor(d: unknown): d is Descriptor {
  const x = d as Descriptor | undefined;
  return typeof x?.mediaType === 'string' && typeof x.digest === 'string' && /^sha256:[0-9a-f]{64}$/.test(x.digest) && Number.isSafeInteger(x.size) && x.size >= 0;
}

/** Whether a manifest body is a memory snapshot (without checking the rest). */
export function isMemorySnapshotManifest(body: Buffer): boolean {
  try {
    return (JSON.parse(body.toString('utf8')) as ImageManifest).artifactType === ARTIFACT_TYPE_MEMORY_SNAPSHOT;
  } catch {
    return false;
  }
}

/**
 * A memory snapshot's manifest and config, checked (the registry is not trusted: every descriptor
 * and number is validated, sizes bounded). Errors: NOT_A_SLIPWAY_DISK when `reference` is not a
 * memory snapshot, CORRUPT_INDEX when its config is malformed, the store's errors.
 */
export async function loadMemorySnapshot(target: Target, reference: string): Promise<LoadedMemorySnapshot> {
  const fetched = await target.fetchManifest(reference);
  const m = JSON.parse(fetched.body.toString('utf8')) as ImageManifest;
  if (m.artifactType !== ARTIFACT_TYPE_MEMORY_SNAPSHOT) throw new SlipwayError('NOT_A_SLIPWAY_DISK', `${target.name}:${reference} is not a slipway memory snapshot (artifactType ${JSON.stringify(m.artifactType)})`);
  const state = m.layers?.[0];
  const bad = (why: string): SlipwayError => new SlipwayError('CORRUPT_INDEX', `memory snapshot ${target.name}@${fetched.descriptor.digest}: ${why}`);
  if (!isDescriptor(m.config) || m.config.mediaType !== MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG || m.config.size > MAX_CONFIG_BYTES) throw bad('its config descriptor is malformed');
  if (!isDescriptor(state) || state.mediaType !== MEDIA_TYPE_QEMU_DEVICE_STATE || state.size > MAX_DEVICE_STATE_BYTES) throw bad('its device-state layer is malformed');
  const config = JSON.parse((await target.fetchBlob(m.config)).toString('utf8')) as MemorySnapshotConfig;
  const s = config?.shape;
  if (config?.formatVersion !== 1 || !isDescriptor(config.disk) || !isDescriptor(config.ram) || m.subject?.digest !== config.disk.digest) throw bad('its config does not name its disk and RAM manifests');
  if (s?.vmm !== 'qemu' || typeof s.vmmVersion !== 'string' || typeof s.machine !== 'string' || !Number.isSafeInteger(s.cpus) || s.cpus < 1 || s.cpus > 64
    || !Number.isSafeInteger(s.memoryMiB) || s.memoryMiB < 64 || s.memoryMiB > 1024 * 1024 || !Array.isArray(s.devices) || !s.devices.every((d) => typeof d === 'string')
    || typeof s.kernel !== 'string' || typeof s.initramfs !== 'string') throw bad('its VM shape is malformed');
  return { manifest: fetched.descriptor, config, deviceState: state };
}

/**
 * Refuse to restore into another shape. Errors: INVALID_ARGUMENT listing every difference
 * ("memoryMiB: the snapshot has 512, this VM would have 1024").
 */
export function checkShape(snapshot: VmShape, here: VmShape): void {
  const diffs: string[] = [];
  for (const k of ['vmm', 'vmmVersion', 'machine', 'cpus', 'memoryMiB', 'kernel', 'initramfs'] as const) {
    if (snapshot[k] !== here[k]) diffs.push(`${k}: the snapshot has ${JSON.stringify(snapshot[k])}, this VM would have ${JSON.stringify(here[k])}`);
  }
  if (JSON.stringify(snapshot.devices) !== JSON.stringify(here.devices)) diffs.push(`devices: the snapshot has ${snapshot.devices.join(', ')}; this VM would have ${here.devices.join(', ')}`);
  if (diffs.length > 0) throw new SlipwayError('INVALID_ARGUMENT', `the memory snapshot restores only into the shape it was taken in: ${diffs.join('; ')}`, { context: { field: 'image' } });
}
