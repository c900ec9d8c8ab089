/**
 * Boot profiles: the ordered chunks a disk's first boot read, stored in the registry next to the
 * disk as an OCI artifact whose `subject` is the disk's manifest. Registries without the referrers
 * API (distribution 2.8) find it by a tag derived from the disk digest, the same shape as the
 * referrers tag schema: `sha256-<hex>.boot-profile`. A host that cannot push keeps it in
 * `<cacheDir>/profiles/` (`writeLocalProfile`); a boot that still had to fetch chunks a profile
 * lacks stores it refined with them (`refineProfile`). See docs/cache.md, "Boot profiles".
 */
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { SlipwayError, isManifestMissing } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import type { DiskArtifact } from '../disk/artifact.js';
import { describedContent, isDigest, sha256Digest, withEmbeddedData } from '../oci/digest.js';
import { copyImage } from '../oci/copy.js';
import type { Target } from '../oci/store.js';
import { ANNOTATION_TITLE, MEDIA_TYPE_OCI_EMPTY, MEDIA_TYPE_OCI_MANIFEST, type Descriptor, type ImageManifest } from '../oci/types.js';

export const ARTIFACT_TYPE_BOOT_PROFILE = 'application/vnd.slipway.boot-profile.v1';
export const MEDIA_TYPE_BOOT_PROFILE = 'application/vnd.slipway.boot-profile.v1+json';
/** A profile listing more chunks than this is refused (it would be a whole-disk prefetch anyway). */
export const MAX_PROFILE_CHUNKS = 1 << 20;

export interface BootProfile {
  formatVersion: 1;
  /** the disk manifest digest the profile was recorded on */
  disk: string;
  chunkSizeBytes: number;
  /** chunk numbers in first-read order */
  chunks: number[];
  /** set when the profile was inherited at push from an earlier version's (profile-inheritance.ts): that disk's manifest digest */
  inheritedFrom?: string;
}

export function profileTag(diskDigest: string): string {
  return `${diskDigest.replace(':', '-')}.boot-profile`;
}

export async function pushBootProfile(target: Target, disk: Descriptor, profile: BootProfile): Promise<Descriptor> {
  const body = Buffer.from(JSON.stringify(profile));
  const layer: Descriptor = { mediaType: MEDIA_TYPE_BOOT_PROFILE, digest: sha256Digest(body), size: body.byteLength, annotations: { [ANNOTATION_TITLE]: 'boot-profile.json' } };
  const empty = Buffer.from('{}');
  const config: Descriptor = { mediaType: MEDIA_TYPE_OCI_EMPTY, digest: sha256Digest(empty), size: empty.byteLength };
  await target.pushBlob(layer, body);
  if (!(await target.blobExists(config.digest))) await target.pushBlob(config, empty);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_OCI_MANIFEST,
    artifactType: ARTIFACT_TYPE_BOOT_PROFILE,
    config,
    // embedded too: a boot reads its profile in the manifest's round trip (the blob stays pushed)
    layers: [withEmbeddedData(layer, body)],
    subject: { mediaType: disk.mediaType || MEDIA_TYPE_OCI_MANIFEST, digest: disk.digest, size: disk.size },
  };
  return target.pushManifest(Buffer.from(JSON.stringify(manifest)), MEDIA_TYPE_OCI_MANIFEST, profileTag(disk.digest));
}

/** The boot profile stored for a disk digest, unchecked, or undefined when there is none. */
export async function fetchBootProfile(target: Target, diskDigest: string): Promise<unknown> {
  let fetched;
  try {
    fetched = await target.fetchManifest(profileTag(diskDigest));
  } catch (err) {
    if (isManifestMissing(err)) return undefined;
    throw err;
  }
  // registry content: every field checked before it is used
  const notProfile = (why: string): SlipwayError => new SlipwayError('INVALID_ARGUMENT', `boot profile for ${diskDigest} is not a slipway boot profile of this disk (${why})`);
  const manifest = parseJson(fetched.body) as Partial<ImageManifest> | null | undefined;
  if (typeof manifest !== 'object' || manifest === null) throw notProfile('its manifest is not a JSON object');
  const layer = Array.isArray(manifest.layers) ? (manifest.layers[0] as unknown) : undefined;
  if (manifest.artifactType !== ARTIFACT_TYPE_BOOT_PROFILE || manifest.subject?.digest !== diskDigest) throw notProfile('another artifact type or subject');
  if (typeof layer !== 'object' || layer === null || !isDigest((layer as Descriptor).digest) || !Number.isSafeInteger((layer as Descriptor).size) || (layer as Descriptor).size > 16 << 20) {
    throw notProfile('no profile layer of at most 16 MiB');
  }
  const profile = parseJson(await describedContent(layer as Descriptor, target));
  if (profile === undefined) throw notProfile('its layer is not JSON');
  return profile;
}

/** `body` parsed as JSON, or undefined when it is not JSON. */
function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * Copy the boot profile of the disk `diskDigest` from `src` to `dst` (where the disk has just been
 * copied), under the same referrers-style tag, with `copyImage`: a disk promoted from one
 * repository or registry to another keeps its fast first boot. Resolves with whether there was a
 * profile to copy.
 */
export async function copyBootProfile(src: Target, dst: Target, diskDigest: string): Promise<boolean> {
  const tag = profileTag(diskDigest);
  try {
    // the profile's manifest is the copy's first read: a disk without one fails there
    await copyImage({ src, srcReference: tag, dst, dstTag: tag });
    return true;
  } catch (err) {
    if (isManifestMissing(err)) return false;
    throw err;
  }
}

/** Check a fetched profile against the disk it is for. */
export function checkBootProfile(raw: unknown, disk: DiskArtifact): BootProfile {
  const profile = raw as BootProfile;
  const count = disk.index.chunkCount;
  if (profile?.formatVersion !== 1 || profile.disk !== disk.manifestDescriptor.digest || !Array.isArray(profile.chunks) || profile.chunks.length > MAX_PROFILE_CHUNKS
    || !profile.chunks.every((n) => Number.isSafeInteger(n) && n >= 0 && n < count)) {
    throw new SlipwayError('INVALID_ARGUMENT', `boot profile for ${disk.manifestDescriptor.digest} is malformed`);
  }
  return profile;
}

/** The disk's boot profile, checked against the disk, or undefined when it has none. */
export async function loadBootProfile(target: Target, disk: DiskArtifact): Promise<BootProfile | undefined> {
  const raw = await fetchBootProfile(target, disk.manifestDescriptor.digest);
  return raw === undefined ? undefined : checkBootProfile(raw, disk);
}

/**
 * Where a host keeps the profiles it could not push (read-only credentials, a registry refusing
 * artifacts): `<cacheDir>/profiles/<hex of the disk digest>.json`, the same JSON as the registry's.
 */
export function localProfilePath(cacheDir: string, diskDigest: string): string {
  return join(cacheDir, 'profiles', `${diskDigest.replace(/^sha256:/, '')}.json`);
}

/** The profile this host kept for a disk digest, unchecked, or undefined when it has none. */
export async function readLocalProfile(cacheDir: string, diskDigest: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(localProfilePath(cacheDir, diskDigest), 'utf8')) as unknown;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export async function writeLocalProfile(cacheDir: string, profile: BootProfile): Promise<string> {
  const path = localProfilePath(cacheDir, profile.disk);
  await mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, Buffer.from(JSON.stringify(profile)));
  return path;
}

/**
 * A profile refined by a boot that used it: `extra` are the chunks that boot still had to fetch
 * (demand misses, and the neighbours fetched with them), each with `after`, the number of the
 * profile's chunks (in profile order) that had arrived when it was fetched. Each extra chunk is
 * inserted at that position, so a later boot asks for it no later than this one needed it.
 * Chunks already in the profile are not added twice.
 */
export function refineProfile(profile: BootProfile, extra: { chunk: number; after: number }[]): BootProfile {
  const have = new Set(profile.chunks);
  const inserts = new Map<number, number[]>();
  for (const { chunk, after } of extra) {
    if (have.has(chunk)) continue;
    have.add(chunk);
    const at = Math.max(0, Math.min(after, profile.chunks.length));
    const list = inserts.get(at);
    if (list) list.push(chunk);
    else inserts.set(at, [chunk]);
  }
  const chunks: number[] = [];
  for (let i = 0; i <= profile.chunks.length; i++) {
    chunks.push(...(inserts.get(i) ?? []));
    if (i < profile.chunks.length) chunks.push(profile.chunks[i] as number);
  }
  return { ...profile, chunks };
}
