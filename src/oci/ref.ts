import { join, resolve as resolvePath } from 'node:path';
import { defaultStoreDir } from '../config.js';
import { SlipwayError } from '../errors.js';
import { isDigest } from './digest.js';

/**
 * An image reference, in one of the two forms slipway stores disks in:
 * - `oci:<dir>[:tag|@digest]` an OCI image-layout directory (skopeo's `oci:` transport grammar);
 * - `[docker://]host[:port]/repo/name[:tag][@digest]` a repository in a registry;
 * - `name[/name...][:tag|@digest]` with no registry host: the embedded default store, one layout
 *   directory per name under `$SLIPWAY_STORE` (default `$XDG_DATA_HOME/slipway/store`). Docker Hub
 *   is reached only when named: `docker.io/library/debian`.
 */
export type ImageRef = LayoutRef | RegistryRef;

export interface LayoutRef {
  kind: 'layout';
  dir: string;
  tag?: string;
  digest?: string;
}

export interface RegistryRef {
  kind: 'registry';
  /** host[:port] as written, with docker.io for Docker Hub */
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const REPO_COMPONENT_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const DOCKER_HUB = 'docker.io';

export const DEFAULT_TAG = 'latest';

function checkTag(tag: string, input: string): string {
  if (!TAG_RE.test(tag)) throw new SlipwayError('INVALID_REFERENCE', `invalid tag ${JSON.stringify(tag)} in reference ${JSON.stringify(input)}`);
  return tag;
}

function checkDigest(digest: string, input: string): string {
  if (!isDigest(digest)) throw new SlipwayError('INVALID_REFERENCE', `invalid digest ${JSON.stringify(digest)} in reference ${JSON.stringify(input)} (want sha256:<64 hex>)`);
  return digest;
}

export function parseRef(input: string, env: NodeJS.ProcessEnv = process.env): ImageRef {
  if (input.length === 0) throw new SlipwayError('INVALID_REFERENCE', 'empty image reference');
  if (input.startsWith('oci:')) return parseLayoutRef(input);
  const parsed = parseRegistryRef(input);
  if (parsed.implicitRegistry && !input.startsWith('docker://')) {
    const ref: LayoutRef = { kind: 'layout', dir: join(defaultStoreDir(env), ...parsed.repository.replace(/^library\//, '').split('/')) };
    if (parsed.tag !== undefined) ref.tag = parsed.tag;
    if (parsed.digest !== undefined) ref.digest = parsed.digest;
    return ref;
  }
  const { implicitRegistry: _implicit, ...ref } = parsed;
  return ref;
}

function parseLayoutRef(input: string): LayoutRef {
  let rest = input.slice(4);
  let digest: string | undefined;
  let tag: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at >= 0 && rest.slice(at + 1).startsWith('sha256:')) {
    digest = checkDigest(rest.slice(at + 1), input);
    rest = rest.slice(0, at);
  } else {
    // skopeo splits `oci:path:reference` at the first colon; a path holding a colon is not expressible.
    const colon = rest.indexOf(':');
    if (colon >= 0) {
      tag = checkTag(rest.slice(colon + 1), input);
      rest = rest.slice(0, colon);
    }
  }
  if (rest.length === 0) throw new SlipwayError('INVALID_REFERENCE', `no directory in layout reference ${JSON.stringify(input)}`);
  const ref: LayoutRef = { kind: 'layout', dir: resolvePath(rest) };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

function parseRegistryRef(input: string): RegistryRef & { implicitRegistry: boolean } {
  let rest = input.startsWith('docker://') ? input.slice(9) : input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = checkDigest(rest.slice(at + 1), input);
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const lastColon = rest.lastIndexOf(':');
  if (lastColon > lastSlash) {
    tag = checkTag(rest.slice(lastColon + 1), input);
    rest = rest.slice(0, lastColon);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  let implicitRegistry = true;
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || /^\[.*\]/.test(first))) {
    registry = first;
    implicitRegistry = false;
    parts.shift();
  }
  if (parts.length === 0 || parts.some((p) => !REPO_COMPONENT_RE.test(p))) {
    throw new SlipwayError('INVALID_REFERENCE', `invalid repository name in reference ${JSON.stringify(input)} (lower-case letters, digits and separators; a layout is written oci:<dir>)`);
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  const ref: RegistryRef & { implicitRegistry: boolean } = { kind: 'registry', registry, repository: parts.join('/'), implicitRegistry };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

/** The tag or digest a reference names, defaulting to `latest`. */
export function refReference(ref: ImageRef): string {
  return ref.digest ?? ref.tag ?? DEFAULT_TAG;
}

export function formatRef(ref: ImageRef): string {
  const suffix = (ref.tag ? `:${ref.tag}` : '') + (ref.digest ? `@${ref.digest}` : '');
  if (ref.kind === 'layout') return `oci:${ref.dir}${suffix}`;
  return `${ref.registry}/${ref.repository}${suffix}`;
}

/** localhost, 127.0.0.0/8 and ::1 are spoken to over plain HTTP; everything else over TLS unless told. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.split(':')[0] ?? '';
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
