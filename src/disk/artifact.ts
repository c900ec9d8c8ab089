import { SlipwayError } from '../errors.js';
import { describedContent } from '../oci/digest.js';
import type { Target } from '../oci/store.js';
import type { Descriptor, ImageManifest } from '../oci/types.js';
import { decompressIndex, maxStoredChunkBytes } from './chunk-codec.js';
import {
  decodeIndex, parseDiskConfig, parseDiskManifest, MEDIA_TYPE_DISK_INDEX,
  type ChunkIndex, type DiskConfig,
} from './format.js';

/** A disk artifact resolved and checked: manifest, config and index, everything verified. */
export interface DiskArtifact {
  reference: string;
  manifestDescriptor: Descriptor;
  manifest: ImageManifest;
  config: DiskConfig;
  index: ChunkIndex;
}

/** The largest index a disk of this shape can have: bounds decompression of an untrusted blob. */
export function maxIndexBytes(config: DiskConfig, layerCount: number): number {
  return 48 + layerCount * 40 + config.chunkCount * (48 + 4);
}

/** What opening a disk needs of a store: blob reads (a cache may stand in front of the store). */
export type BlobReader = Pick<Target, 'name' | 'fetchBlob'>;

/** Read and check the index blob a config names, against the manifest's layers. */
export async function loadIndex(target: BlobReader, manifest: ImageManifest, config: DiskConfig, reference: string, fetched?: Promise<Buffer>): Promise<ChunkIndex> {
  const indexLayer = manifest.layers[0] as Descriptor;
  if (indexLayer.mediaType !== MEDIA_TYPE_DISK_INDEX) throw new SlipwayError('NOT_A_SLIPWAY_DISK', `${reference}: first layer is not a chunk index`);
  const blob = await (fetched ?? target.fetchBlob(indexLayer));
  const index = decodeIndex(decompressIndex(blob, maxIndexBytes(config, manifest.layers.length)), maxStoredChunkBytes);
  if (index.sizeBytes !== config.sizeBytes || index.chunkSizeBytes !== config.chunkSizeBytes) {
    throw new SlipwayError('CORRUPT_INDEX', `${reference}: index describes a ${index.sizeBytes}-byte disk in ${index.chunkSizeBytes}-byte chunks, config says ${config.sizeBytes} in ${config.chunkSizeBytes}`);
  }
  const layers = new Map(manifest.layers.map((l) => [l.digest, l] as const));
  for (const pack of index.packs) {
    const layer = layers.get(pack.digest);
    if (!layer || layer.size !== pack.size) throw new SlipwayError('CORRUPT_INDEX', `${reference}: index names pack ${pack.digest} that the manifest does not list`);
  }
  return index;
}

/** Resolve a tag or digest in a store to a checked slipway disk. */
export async function openDiskArtifact(target: Target, reference: string): Promise<DiskArtifact> {
  const { descriptor, body } = await target.fetchManifest(reference);
  return openDiskFromManifest(target, reference, descriptor, body);
}

export async function openDiskFromManifest(target: BlobReader, reference: string, descriptor: Descriptor, body: Buffer): Promise<DiskArtifact> {
  const manifest = parseDiskManifest(body, `${target.name}:${reference}`);
  // config and index in parallel (the index is checked against the config once both are here);
  // either one the manifest embeds (and that matches its digest) is not fetched
  const indexBlob = describedContent(manifest.layers[0] as Descriptor, target);
  indexBlob.catch(() => undefined);
  const configBlob = await describedContent(manifest.config, target);
  const config = parseDiskConfig(configBlob, manifest, `${target.name}:${reference}`);
  const index = await loadIndex(target, manifest, config, `${target.name}:${reference}`, indexBlob);
  return { reference, manifestDescriptor: descriptor, manifest, config, index };
}

/** Summary `slipway inspect` prints. */
export function describeDisk(a: DiskArtifact): Record<string, unknown> {
  return {
    reference: a.reference,
    digest: a.manifestDescriptor.digest,
    artifactType: a.manifest.artifactType,
    formatVersion: a.config.formatVersion,
    sizeBytes: a.config.sizeBytes,
    chunkSizeBytes: a.config.chunkSizeBytes,
    chunks: a.config.chunkCount,
    zeroChunks: a.config.stats.zeroChunks,
    uniqueChunks: a.index.entries.length,
    storedBytes: a.config.stats.storedBytes,
    compression: a.config.compression,
    packs: a.index.packs.length,
    packBytes: a.index.packs.reduce((s, p) => s + p.size, 0),
    indexBytes: a.config.index.size,
    base: a.config.base?.digest ?? null,
  };
}
