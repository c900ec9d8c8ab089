/**
 * Opening a disk by reference (`ChunkCache.openDisk`): its sources, its manifest, config and
 * index (disk-manifest.ts: kept by digest, so a disk already seen opens without its registry),
 * its boot profile (the registry's, else one this host kept), then a `LazyDisk` set up as the
 * options ask: pinned, recording or refining a profile, speculating, prefetching.
 */
import { openDiskFromManifest } from '../disk/artifact.js';
import { parseDiskManifest } from '../disk/format.js';
import { isSlipwayError, SlipwayError } from '../errors.js';
import type { FetchedManifest } from '../oci/store.js';
import type { OciLayoutStore } from '../oci/layout/layout-store.js';
import type { Targets } from '../oci/open.js';
import { formatRef, parseRef, refReference } from '../oci/ref.js';
import { checkBootProfile, fetchBootProfile, readLocalProfile } from './boot-profile.js';
import type { DiskChunkCache, TagRecords } from './cache-types.js';
import { cachingBlobReader, diskSources, resolveDiskManifest } from './disk-manifest.js';
import { LazyDisk, type OpenDiskOptions } from './lazy-disk.js';
import type { Source } from './remote-tier.js';
import type { DiskArtifact } from '../disk/artifact.js';

/** How many of a disk's first chunks are looked up to tell whether it has chunks to fetch. */
const PRECONNECT_PROBE_ENTRIES = 64;

/**
 * Open the connections a disk's first reads will use (`connectionsPerHost` of them) to the source
 * those reads ask first, while the guest is still starting, unless its first chunks are all here
 * already (a disk this host has read before). Resolves with how many were opened.
 */
function preconnect(cache: DiskChunkCache, artifact: DiskArtifact, first: Source): Promise<number> {
  const entries = artifact.index.entries.slice(0, PRECONNECT_PROBE_ENTRIES);
  if (!entries.some((e) => !cache.isLocalOrFetching(e.digest.toString('hex')))) return Promise.resolve(0);
  return first.target.preconnect?.(cache.config.connectionsPerHost) ?? Promise.resolve(0);
}

/** What opening a disk needs of the cache: its chunks, the stores, and its metadata (manifests, configs and indexes by digest; tags seen). */
export interface DiskOpening {
  cache: DiskChunkCache;
  targets: Targets;
  meta: OciLayoutStore;
  tags: TagRecords;
}

/** The manifests of references refused as not a disk, by the refusal (see `manifestRefusedAsDisk`). */
const refused = new WeakMap<object, FetchedManifest>();

/**
 * The manifest a NOT_A_SLIPWAY_DISK refusal from opening a disk was about (resolved, and kept by
 * digest, by that attempt), or undefined for any other error: what a caller that goes on to read
 * the reference as another artifact (a memory snapshot) reads instead of resolving it again.
 */
export function manifestRefusedAsDisk(err: unknown): FetchedManifest | undefined {
  return typeof err === 'object' && err !== null ? refused.get(err) : undefined;
}

/** Whether a manifest body passes as a disk's (what `openDiskFromManifest` checks first). */
function looksLikeDisk(body: Buffer): boolean {
  try {
    parseDiskManifest(body, 'manifest');
    return true;
  } catch {
    return false;
  }
}

export async function openLazyDisk(deps: DiskOpening, refText: string, opts: OpenDiskOptions): Promise<LazyDisk> {
  const { cache, meta } = deps;
  if (opts.profileInBackground && (opts.recordProfile || opts.recordProfileIfMissing)) throw new SlipwayError('INVALID_ARGUMENT', 'profileInBackground cannot be combined with recording a profile');
  const ref = parseRef(refText);
  const sources = await diskSources(deps.targets, cache.config.mirrors, ref);
  const origin = (sources[sources.length - 1] as Source).target;
  // the boot profile (a registry round trip or two) is fetched while the config and index are;
  // by digest, while the manifest is too
  const wantProfile = opts.useProfile !== false || opts.recordProfileIfMissing === true;
  const early = wantProfile && ref.digest !== undefined ? fetchBootProfile(origin, ref.digest) : undefined;
  early?.catch(() => undefined);
  const { fetched, offline } = await resolveDiskManifest(meta, deps.tags, cache.logger, ref, sources);
  // a manifest that is no disk (a memory snapshot opened as one first) has no profile to look up
  const profileFetch = !wantProfile || offline || !looksLikeDisk(fetched.body) ? Promise.resolve(undefined)
    : early !== undefined && ref.digest === fetched.descriptor.digest ? early : fetchBootProfile(origin, fetched.descriptor.digest);
  profileFetch.catch(() => undefined);
  const artifact = await openDiskFromManifest(cachingBlobReader(meta, sources, origin.name), refReference(ref), fetched.descriptor, fetched.body).catch((err: unknown) => {
    if (isSlipwayError(err, 'NOT_A_SLIPWAY_DISK')) refused.set(err, fetched);
    throw err;
  });
  const disk = new LazyDisk(cache, formatRef(ref), artifact, origin, sources, offline);
  if (!offline) disk.preconnected = preconnect(cache, artifact, sources[0] as Source);
  if (opts.pin !== false) disk.pin();
  if (opts.recordProfile) disk.startProfile();
  disk.setSpeculation(opts.speculate === true);
  disk.setMemoryTier(opts.memoryTier !== false);
  if (opts.useProfile !== false || opts.recordProfileIfMissing === true) {
    const applyProfile = async (): Promise<void> => {
      // the registry's profile, else one this host kept because it could not push it
      let from: 'registry' | 'local' = 'registry';
      const raw = await profileFetch.then(async (r) => {
        if (r !== undefined) return r;
        from = 'local';
        return readLocalProfile(cache.config.cacheDir, fetched.descriptor.digest);
      });
      const profile = await Promise.resolve(raw).then((r) => (r === undefined ? undefined : checkBootProfile(r, artifact))).catch((err: unknown) => {
        cache.logger.warn('could not read the boot profile; opening without it', { disk: formatRef(ref), error: (err as Error).message });
        return null;
      });
      if (profile) disk.useBaseProfile(profile, from, opts.recordProfileIfMissing === true && !opts.recordProfile);
      if (profile && opts.useProfile !== false) void disk.prefetchProfile(profile);
      if (profile === undefined && opts.recordProfileIfMissing) disk.startProfile();
    };
    if (opts.profileInBackground) {
      disk.profileSettled = applyProfile().catch((err: unknown) => {
        cache.logger.warn('could not look up the boot profile; going on without it', { disk: formatRef(ref), error: (err as Error).message });
      });
    } else {
      await applyProfile();
    }
  }
  if (opts.fill) void disk.fillInBackground();
  return disk;
}
