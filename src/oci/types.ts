/** OCI image-spec and distribution-spec types slipway uses. */

export const MEDIA_TYPE_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const MEDIA_TYPE_OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const MEDIA_TYPE_DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const MEDIA_TYPE_DOCKER_MANIFEST_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const MEDIA_TYPE_OCI_EMPTY = 'application/vnd.oci.empty.v1+json';
export const ANNOTATION_TITLE = 'org.opencontainers.image.title';
export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';

/** Manifest media types slipway asks for and accepts. */
export const MANIFEST_MEDIA_TYPES = [
  MEDIA_TYPE_OCI_MANIFEST,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
] as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  artifactType?: string;
  urls?: string[];
  platform?: { architecture: string; os: string; variant?: string };
  /**
   * The content itself, base64 (image-spec v1.1 descriptor.md, "data"): a reader may use it
   * instead of fetching the blob, once it matches `digest` and `size` (oci/digest.ts's
   * `embeddedContent`). slipway embeds small metadata it reads on a restore's or boot's critical
   * path (a memory snapshot's config, a boot profile) and still pushes the blob.
   */
  data?: string;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export function isIndexMediaType(mediaType: string | undefined): boolean {
  return mediaType === MEDIA_TYPE_OCI_INDEX || mediaType === MEDIA_TYPE_DOCKER_MANIFEST_LIST;
}

export function isManifestMediaType(mediaType: string | undefined): boolean {
  return (MANIFEST_MEDIA_TYPES as readonly string[]).includes(mediaType ?? '');
}

/** The descriptors a manifest or index points to: the graph edges `copy` walks. */
export function successors(mediaType: string, body: Buffer): Descriptor[] {
  const doc = JSON.parse(body.toString('utf8')) as Partial<ImageManifest & ImageIndex>;
  const out: Descriptor[] = [];
  if (isIndexMediaType(mediaType)) out.push(...(doc.manifests ?? []));
  else {
    if (doc.config) out.push(doc.config);
    out.push(...(doc.layers ?? []));
  }
  return out;
}
