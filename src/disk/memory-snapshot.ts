/**
 * The memory-snapshot artifact (docs/snapshots.md): a VM paused into the registry.
 *
 * Three manifests in one repository, the last one written last:
 * - `<tag>.disk`: the VM's disk as a delta of the disk it booted from (a slipway disk artifact);
 * - `<tag>.ram`: the guest RAM image, stored in the disk format's chunk store (a slipway disk
 *   artifact of RAM size: zero chunks elided, sha256, zstd, packs, dedup within the image, against
 *   the repository's recent RAM images and the parent snapshot's);
 * - `<tag>`: artifactType `application/vnd.slipway.memory-snapshot.v1`, `subject` the disk
 *   manifest, the VMM's device state as layers (STATE_LAYERS), and a config naming the disk and
 *   RAM manifests and the VM's shape. A restore refuses any other shape.
 *
 * The state layers by VMM (`shape.vmm`), each one file of the saved state's directory:
 * - QEMU: one layer, its migration stream with RAM left out (x-ignore-shared), `device-state`;
 * - Cloud Hypervisor: two layers, what `vm.snapshot` writes besides the RAM: `state.json` (vCPU
 *   and device state), then `config.json` (the VmConfig it restores from). Its `memory-ranges`
 *   (the guest RAM, concatenated ranges) is the `<tag>.ram` image. Two plain layers rather than a
 *   tar: each is one JSON file CH reads as is, content-addressed on its own (an unchanged
 *   config.json is not uploaded again), and nothing has to be unpacked or checked for paths.
 */
import { SlipwayError } from '../errors.js';
import { describedContent, MAX_EMBEDDED_BYTES, sha256Digest, withEmbeddedData } from '../oci/digest.js';
import type { FetchedManifest, Target } from '../oci/store.js';
import type { BlobReader } from './artifact.js';
import { MEDIA_TYPE_OCI_MANIFEST, type Descriptor, type ImageManifest } from '../oci/types.js';

export const ARTIFACT_TYPE_MEMORY_SNAPSHOT = 'application/vnd.slipway.memory-snapshot.v1';
export const MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG = 'application/vnd.slipway.memory-snapshot.config.v1+json';
export const MEDIA_TYPE_QEMU_DEVICE_STATE = 'application/vnd.slipway.qemu-device-state.v1';
/** Cloud Hypervisor's `state.json` and `config.json` from `vm.snapshot` */
export const MEDIA_TYPE_CH_STATE = 'application/vnd.slipway.cloud-hypervisor.state.v1+json';
export const MEDIA_TYPE_CH_CONFIG = 'application/vnd.slipway.cloud-hypervisor.config.v1+json';

/** The VMMs whose memory snapshots slipway stores. */
export type SnapshotVmm = 'qemu' | 'cloud-hypervisor';

/** The device-state layers of each VMM's snapshot, in order, and the file each is in a saved state's directory. */
export const STATE_LAYERS: Readonly<Record<SnapshotVmm, readonly { mediaType: string; file: string }[]>> = {
  qemu: [{ mediaType: MEDIA_TYPE_QEMU_DEVICE_STATE, file: 'device-state' }],
  'cloud-hypervisor': [{ mediaType: MEDIA_TYPE_CH_STATE, file: 'state.json' }, { mediaType: MEDIA_TYPE_CH_CONFIG, file: 'config.json' }],
};
/** A device-state layer over this is refused (QEMU's is a few hundred KB with RAM left out, CH's state.json about as much). */
export const MAX_DEVICE_STATE_BYTES = 64 << 20;
const MAX_CONFIG_BYTES = 1 << 20;

/** What a restore must match exactly: the machine the memory image and device state came from. */
export interface VmShape {
  vmm: SnapshotVmm;
  /** `qemu-system-x86_64 --version`'s version, `cloud-hypervisor --version`'s */
  vmmVersion: string;
  /** QEMU's machine type (q35); Cloud Hypervisor has one machine per architecture: `x86_64` */
  machine: string;
  cpus: number;
  memoryMiB: number;
  /** the device set, in the VMM's order (what the device state describes) */
  devices: string[];
  /** sha256 of the guest kernel the VM booted (QEMU: the bzImage; Cloud Hypervisor: the vmlinux) and of its initramfs */
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
 * The config as pushed: the disk and RAM manifests it embeds (`data`) dropped, the disk's first,
 * until it fits in its own descriptor's `data` (MAX_EMBEDDED_BYTES), which saves a restore more.
 */
function fitted(config: MemorySnapshotConfig): MemorySnapshotConfig {
  let c = config;
  for (const key of ['disk', 'ram'] as const) {
    if (Buffer.byteLength(JSON.stringify(c)) <= MAX_EMBEDDED_BYTES) break;
    const { data: _dropped, ...plain } = c[key];
    c = { ...c, [key]: plain };
  }
  return c;
}

/**
 * Push the memory snapshot's own manifest (device state, config, subject the disk), tagged `tag`.
 * `state`: the contents of the state layers, in STATE_LAYERS order for `config.shape.vmm`. The
 * disk and RAM manifests must be in `target` already. Errors: INVALID_ARGUMENT when `state` is
 * not as many layers as the VMM has; the store's.
 */
export async function pushMemorySnapshot(target: Target, tag: string, config: MemorySnapshotConfig, state: Buffer[]): Promise<Descriptor> {
  const kinds = STATE_LAYERS[config.shape.vmm];
  if (state.length !== kinds.length) throw new SlipwayError('INVALID_ARGUMENT', `a ${config.shape.vmm} memory snapshot has ${kinds.length} state layer(s), not ${state.length}`);
  const layers = state.map((data, i): Descriptor => ({ mediaType: kinds[i]?.mediaType ?? '', digest: sha256Digest(data), size: data.byteLength }));
  const configBody = Buffer.from(JSON.stringify(fitted(config)));
  const configDesc: Descriptor = { mediaType: MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG, digest: sha256Digest(configBody), size: configBody.byteLength };
  for (const [i, desc] of layers.entries()) {
    const data = state[i];
    if (data && !(await target.blobExists(desc.digest))) await target.pushBlob(desc, data);
  }
  if (!(await target.blobExists(configDesc.digest))) await target.pushBlob(configDesc, configBody);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_OCI_MANIFEST,
    artifactType: ARTIFACT_TYPE_MEMORY_SNAPSHOT,
    // the config rides in the manifest too (a restore reads it without a round trip); its blob is
    // still pushed, for registries that check a manifest's blobs and readers that ignore `data`
    config: withEmbeddedData(configDesc, configBody),
    layers,
    // (the subject without the disk manifest the config embeds)
    subject: { mediaType: config.disk.mediaType, digest: config.disk.digest, size: config.disk.size },
    annotations: { 'org.opencontainers.image.created': config.createdAt },
  };
  return target.pushManifest(Buffer.from(JSON.stringify(manifest)), MEDIA_TYPE_OCI_MANIFEST, tag);
}

export interface LoadedMemorySnapshot {
  manifest: Descriptor;
  config: MemorySnapshotConfig;
  /** the state layers, checked against STATE_LAYERS for the shape's VMM, with the file each goes into */
  state: { descriptor: Descriptor; file: string }[];
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
 * and number is validated, sizes bounded). `manifest`: the manifest `reference` names, already
 * fetched (it is checked the same); `blobs`: where its config is read (a cache's copy, else the
 * registry; verified by digest either way). Errors: NOT_A_SLIPWAY_DISK when `reference` is not a memory
 * snapshot, CORRUPT_INDEX when its config is malformed, the store's errors.
 */
export async function loadMemorySnapshot(target: Target, reference: string, manifest?: FetchedManifest, blobs: BlobReader = target): Promise<LoadedMemorySnapshot> {
  const fetched = manifest ?? (await target.fetchManifest(reference));
  let m: ImageManifest;
  try {
    m = (JSON.parse(fetched.body.toString('utf8')) as ImageManifest | null) ?? ({} as ImageManifest);
  } catch {
    m = {} as ImageManifest;
  }
  if (typeof m !== 'object' || m.artifactType !== ARTIFACT_TYPE_MEMORY_SNAPSHOT) throw new SlipwayError('NOT_A_SLIPWAY_DISK', `${target.name}:${reference} is not a slipway memory snapshot (artifactType ${JSON.stringify(m.artifactType)})`);
  const bad = (why: string): SlipwayError => new SlipwayError('CORRUPT_INDEX', `memory snapshot ${target.name}@${fetched.descriptor.digest}: ${why}`);
  if (!isDescriptor(m.config) || m.config.mediaType !== MEDIA_TYPE_MEMORY_SNAPSHOT_CONFIG || m.config.size > MAX_CONFIG_BYTES) throw bad('its config descriptor is malformed');
  // the layers are checked against the VMM the config names, so a layer of one VMM's state
  // never reaches another VMM (a CH config.json is not QEMU's migration stream, nor the reverse)
  const layers: unknown[] = Array.isArray(m.layers) ? m.layers : [];
  if (!layers.every((l) => isDescriptor(l) && l.size <= MAX_DEVICE_STATE_BYTES)) throw bad('its device-state layer is malformed');
  // embedded in the manifest (checked against its digest), else its blob
  let config: MemorySnapshotConfig;
  try {
    config = JSON.parse((await describedContent(m.config, blobs)).toString('utf8')) as MemorySnapshotConfig;
  } catch (err) {
    if (err instanceof SyntaxError) throw bad('its config is not JSON');
    throw err;
  }
  const s = config?.shape;
  if (config?.formatVersion !== 1 || !isDescriptor(config.disk) || !isDescriptor(config.ram) || m.subject?.digest !== config.disk.digest) throw bad('its config does not name its disk and RAM manifests');
  if ((s?.vmm !== 'qemu' && s?.vmm !== 'cloud-hypervisor') || typeof s.vmmVersion !== 'string' || typeof s.machine !== 'string' || !Number.isSafeInteger(s.cpus) || s.cpus < 1 || s.cpus > 64
    || !Number.isSafeInteger(s.memoryMiB) || s.memoryMiB < 64 || s.memoryMiB > 1024 * 1024 || !Array.isArray(s.devices) || !s.devices.every((d) => typeof d === 'string')
    || typeof s.kernel !== 'string' || typeof s.initramfs !== 'string') throw bad('its VM shape is malformed');
  if (typeof config.createdAt !== 'string' || (config.parent !== undefined && typeof config.parent !== 'string')) throw bad('its creation time or parent is malformed');
  const kinds = STATE_LAYERS[s.vmm];
  const wrongLayers = (): SlipwayError => bad(`its device-state layers are not those of a ${s.vmm} snapshot (${kinds.map((k) => k.mediaType).join(', ')})`);
  if (layers.length !== kinds.length) throw wrongLayers();
  const state: LoadedMemorySnapshot['state'] = [];
  for (const [i, kind] of kinds.entries()) {
    const descriptor = layers[i];
    if (!isDescriptor(descriptor) || descriptor.mediaType !== kind.mediaType) throw wrongLayers();
    state.push({ descriptor, file: kind.file });
  }
  return { manifest: fetched.descriptor, config, state };
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
