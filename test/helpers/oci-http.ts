/**
 * Plain distribution-API calls with fetch, independent of slipway's own client: used to put
 * things into a registry that slipway would never write (an ordinary container image) and to
 * check what a registry holds after slipway ran.
 */
import { createHash } from 'node:crypto';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER_TAR_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
const ACCEPT = [OCI_MANIFEST, 'application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.v2+json'].join(', ');

export function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

function headers(extra: Record<string, string>, authorization?: string): Record<string, string> {
  return authorization ? { ...extra, authorization } : extra;
}

export function basic(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

/** Monolithic upload: POST to open an upload, PUT the bytes with ?digest=. */
export async function putBlob(host: string, repo: string, data: Buffer, authorization?: string): Promise<string> {
  const digest = sha256(data);
  const start = await fetch(`http://${host}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: headers({}, authorization) });
  if (start.status !== 202) throw new Error(`POST upload to ${host}/${repo}: ${start.status} ${await start.text()}`);
  const location = new URL(start.headers.get('location') ?? '', `http://${host}`);
  location.searchParams.set('digest', digest);
  const put = await fetch(location, {
    method: 'PUT', body: data,
    headers: headers({ 'content-type': 'application/octet-stream' }, authorization),
  });
  if (put.status !== 201) throw new Error(`PUT blob to ${host}/${repo}: ${put.status} ${await put.text()}`);
  return digest;
}

export async function putManifest(host: string, repo: string, reference: string, body: Buffer, mediaType = OCI_MANIFEST, authorization?: string): Promise<string> {
  const res = await fetch(`http://${host}/v2/${repo}/manifests/${reference}`, {
    method: 'PUT', body, headers: headers({ 'content-type': mediaType }, authorization),
  });
  if (res.status !== 201) throw new Error(`PUT manifest ${host}/${repo}:${reference}: ${res.status} ${await res.text()}`);
  return res.headers.get('docker-content-digest') ?? sha256(body);
}

/** The digest a tag points to, or undefined when the registry does not know it. */
export async function manifestDigest(host: string, repo: string, reference: string, authorization?: string): Promise<string | undefined> {
  const res = await fetch(`http://${host}/v2/${repo}/manifests/${reference}`, { method: 'GET', headers: headers({ accept: ACCEPT }, authorization) });
  if (res.status === 404) return undefined;
  if (res.status !== 200) throw new Error(`GET manifest ${host}/${repo}:${reference}: ${res.status} ${await res.text()}`);
  const body = Buffer.from(await res.arrayBuffer());
  const digest = sha256(body);
  const claimed = res.headers.get('docker-content-digest');
  if (claimed && claimed !== digest) throw new Error(`registry says ${claimed} for ${reference} but the body hashes to ${digest}`);
  return digest;
}

/**
 * An ordinary single-layer container image (OCI image config, one tar+gzip layer): what
 * `docker push` would leave in a registry, and nothing slipway can read as a disk.
 */
export async function pushPlainImage(host: string, repo: string, tag: string, authorization?: string): Promise<string> {
  const config = Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux',
    config: { Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: [] },
  }));
  const layer = Buffer.from('not really a tarball, but the registry does not look inside layers');
  const configDigest = await putBlob(host, repo, config, authorization);
  const layerDigest = await putBlob(host, repo, layer, authorization);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: configDigest, size: config.byteLength },
    layers: [{ mediaType: OCI_LAYER_TAR_GZIP, digest: layerDigest, size: layer.byteLength }],
  }));
  return putManifest(host, repo, tag, manifest, OCI_MANIFEST, authorization);
}
