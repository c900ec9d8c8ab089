import { Readable } from 'node:stream';
import { RegistryError, SlipwayError } from '../../errors.js';
import { isDigest, sha256Digest, verifyContent, verifyingStream } from '../digest.js';
import type { FetchedManifest, RangeReadOptions, Target } from '../store.js';
import { MANIFEST_MEDIA_TYPES, type Descriptor } from '../types.js';
import { repositoryScope } from './auth.js';
import { header, type RegistryClient } from './transport.js';

/** Blobs above this size are uploaded in chunks (PATCH with Content-Range) rather than in one PUT. */
export const CHUNKED_UPLOAD_THRESHOLD_BYTES = 64 << 20;
const UPLOAD_CHUNK_BYTES = 16 << 20;
/** Upload sessions one monolithic blob push may open when answers are lost. */
const UPLOAD_SESSIONS = 3;
/** Redirect statuses: a registry sends blob and manifest requests to a storage back-end with these. */
const REDIRECTS = [301, 302, 303, 307, 308];

/**
 * Whether a failed commit of an upload may have reached the registry after all: the connection
 * dropped after the request went out (its answer lost), or the transport's replay of the same
 * request found the session already finished (BLOB_UPLOAD_UNKNOWN), or the registry failed after
 * the bytes were in (5xx after retries). The blob may exist; the session can not be reused.
 */
function mayHaveCommitted(err: unknown): boolean {
  return err instanceof SlipwayError && (err.code === 'REGISTRY_UNREACHABLE' || err.code === 'BLOB_UPLOAD_UNKNOWN' || err.code === 'REGISTRY_ERROR' || err.code === 'SIZE_INVALID');
}


/**
 * One repository in a registry, through the OCI distribution API: HEAD/GET/PUT of manifests
 * and blobs, monolithic and chunked uploads, cross-repository mounts and Range GETs.
 */
export class RegistryRepository implements Target {
  readonly name: string;
  private readonly pullScope: string[];
  private readonly pushScope: string[];

  constructor(readonly client: RegistryClient, readonly repository: string) {
    this.name = `${client.registry}/${repository}`;
    this.pullScope = [repositoryScope(repository, 'pull')];
    this.pushScope = [repositoryScope(repository, 'pull,push')];
  }

  preconnect(connections: number): Promise<number> {
    return this.client.preconnect(connections);
  }

  private path(kind: 'blobs' | 'manifests', reference: string): string {
    return `/v2/${this.repository}/${kind}/${reference}`;
  }

  /**
   * HEAD of the blob (distribution-spec "checking if content exists"). A redirect to a storage
   * back-end means the registry has it: the redirect is not followed, because a URL signed for
   * GET (S3, GCS) refuses a HEAD.
   */
  async blobExists(digest: string): Promise<boolean> {
    const res = await this.client.send({
      method: 'HEAD', url: this.path('blobs', digest), scopes: this.pullScope, expect: [200, 404, ...REDIRECTS], read: 'none',
      what: `checking blob ${digest} in ${this.name}`,
    });
    return res.status !== 404;
  }

  async fetchBlob(desc: Descriptor): Promise<Buffer> {
    const res = await this.client.send({
      method: 'GET', url: this.path('blobs', desc.digest), scopes: this.pullScope, expect: [200], read: 'buffer', expectBytes: { 200: desc.size },
      notFound: 'BLOB_UNKNOWN', followRedirects: true, what: `fetching blob ${desc.digest} from ${this.name}`,
    });
    const body = res.body ?? Buffer.alloc(0);
    verifyContent(body, desc, `blob ${desc.digest} from ${this.name}`);
    return body;
  }

  async fetchBlobStream(desc: Descriptor): Promise<Readable> {
    const res = await this.client.send({
      method: 'GET', url: this.path('blobs', desc.digest), scopes: this.pullScope, expect: [200], read: 'stream',
      notFound: 'BLOB_UNKNOWN', followRedirects: true, what: `fetching blob ${desc.digest} from ${this.name}`,
    });
    if (!res.stream) throw new SlipwayError('REGISTRY_ERROR', `no body fetching ${desc.digest}`);
    return verifyingStream(res.stream, desc, `blob ${desc.digest} from ${this.name}`);
  }

  /**
   * One Range GET. A server that ignores Range answers 200 with the whole blob: the whole blob is
   * then verified against its digest and the asked-for slice returned (`onWholeBlob` may keep the rest).
   * An answer shorter (or longer) than asked for (`length` bytes, or the whole `desc.size` for a
   * 200) is a short read, retried by the transport and then thrown as SIZE_INVALID (transient);
   * only a complete whole blob that does not match its digest is DIGEST_MISMATCH.
   */
  async fetchBlobRange(desc: Descriptor, offset: number, length: number, opts: RangeReadOptions = {}): Promise<Buffer> {
    const { res } = await this.rangeGet(desc, offset, length, 'buffer', opts.signal);
    const body = res.body ?? Buffer.alloc(0);
    if (res.status === 200) return this.sliceOfWhole(body, desc, offset, length, opts.onWholeBlob);
    // never shorter (the transport retries short reads); longer only from a server that sent more
    // than asked: the bytes asked for are its first ones, and every chunk in them is verified
    return body.byteLength === length ? body : body.subarray(0, length);
  }

  /**
   * One Range GET whose body is handed over as it arrives: the bytes `offset`..`offset+length` of
   * the blob, in order, in pieces of whatever size the connection delivers. The iterable throws
   * when the connection drops mid-body (a transient error); a body shorter than asked for ends
   * early, which the caller must check (see `fetchBlobRange` for the 200 and longer cases: a whole
   * blob is read, verified, handed to `onWholeBlob`, and its slice is the one piece).
   */
  async fetchBlobRangeStream(desc: Descriptor, offset: number, length: number, opts: RangeReadOptions = {}): Promise<AsyncIterable<Buffer> | Iterable<Buffer>> {
    const { res, what } = await this.rangeGet(desc, offset, length, 'stream', opts.signal);
    if (!res.stream) throw new SlipwayError('REGISTRY_ERROR', `${what}: no body`);
    if (res.status === 206) return res.stream;
    const pieces: Buffer[] = [];
    let got = 0;
    for await (const piece of res.stream) {
      got += (piece as Buffer).byteLength;
      // a body past the blob's size is not this blob (and must not fill memory)
      if (got > desc.size) throw new RegistryError('DIGEST_MISMATCH', `${what}: the whole blob (Range ignored) runs past its ${desc.size} bytes`, { method: 'GET', url: res.url, status: 200 });
      pieces.push(piece as Buffer);
    }
    const body = Buffer.concat(pieces);
    if (body.byteLength !== desc.size) throw new RegistryError('SIZE_INVALID', `${what}: short read: the whole blob (Range ignored) has ${body.byteLength} of ${desc.size} bytes`, { method: 'GET', url: res.url, status: 200 });
    return [this.sliceOfWhole(body, desc, offset, length, opts.onWholeBlob)];
  }

  /** The Range GET of both range reads: the range checked against the blob, then sent. */
  private async rangeGet(desc: Descriptor, offset: number, length: number, read: 'buffer' | 'stream', signal: AbortSignal | undefined): Promise<{ res: Awaited<ReturnType<RegistryClient['send']>>; what: string }> {
    if (offset < 0 || length <= 0 || offset + length > desc.size) {
      throw new SlipwayError('INVALID_ARGUMENT', `range ${offset}+${length} is outside blob ${desc.digest} of ${desc.size} bytes`);
    }
    const what = `fetching bytes ${offset}+${length} of blob ${desc.digest} from ${this.name}`;
    const res = await this.client.send({
      method: 'GET', url: this.path('blobs', desc.digest), headers: { range: `bytes=${offset}-${offset + length - 1}` },
      scopes: this.pullScope, expect: [200, 206], read, ...(read === 'buffer' ? { expectBytes: { 200: desc.size, 206: length } } : {}), notFound: 'BLOB_UNKNOWN', followRedirects: true, what,
      ...(signal ? { signal } : {}),
    });
    return { res, what };
  }

  /** A whole blob a server sent for a Range GET (Range ignored): verified, handed to `onWholeBlob`, and sliced. */
  private sliceOfWhole(body: Buffer, desc: Descriptor, offset: number, length: number, onWholeBlob?: (blob: Buffer) => void): Buffer {
    verifyContent(body, desc, `blob ${desc.digest} from ${this.name} (sent whole, Range ignored)`);
    onWholeBlob?.(body);
    return body.subarray(offset, offset + length);
  }

  private async startUpload(what: string): Promise<string> {
    const res = await this.client.send({
      method: 'POST', url: `/v2/${this.repository}/blobs/uploads/`, scopes: this.pushScope, expect: [202], read: 'none', what,
    });
    const location = header(res.headers, 'location');
    if (!location) throw new RegistryError('BLOB_UPLOAD_INVALID', `${what}: registry gave no upload location`, { method: 'POST', url: res.url, status: res.status });
    return this.client.resolveUrl(location);
  }

  private withDigest(location: string, digest: string): string {
    const url = new URL(location);
    url.searchParams.set('digest', digest);
    return url.toString();
  }

  /**
   * Monolithic upload (distribution-spec: POST, then PUT `?digest=` with the bytes). When the PUT's
   * answer is lost (see `mayHaveCommitted`), the blob is checked for (HEAD): there, the push is
   * done; absent and the session unknown (BLOB_UPLOAD_UNKNOWN), it is pushed again in a new session,
   * never by replaying the finished one (at most UPLOAD_SESSIONS sessions); else the error stands.
   */
  async pushBlob(desc: Descriptor, data: Buffer): Promise<void> {
    verifyContent(data, desc, `blob pushed to ${this.name}`);
    if (data.byteLength > CHUNKED_UPLOAD_THRESHOLD_BYTES) {
      await this.pushBlobStream(desc, Readable.from([data]));
      return;
    }
    const what = `uploading blob ${desc.digest} to ${this.name}`;
    for (let session = 1; ; session++) {
      const location = await this.startUpload(what);
      try {
        await this.client.send({
          method: 'PUT', url: this.withDigest(location, desc.digest), body: data,
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(data.byteLength) },
          scopes: this.pushScope, expect: [201], read: 'none', what,
        });
        return;
      } catch (err) {
        if (!mayHaveCommitted(err)) throw err;
        if (await this.blobExists(desc.digest).catch(() => false)) return;
        // a session the registry no longer knows cannot be replayed: open a new one
        if (!(err instanceof SlipwayError && err.code === 'BLOB_UPLOAD_UNKNOWN') || session >= UPLOAD_SESSIONS) throw err;
      }
    }
  }

  /** Chunked upload: POST, then PATCH with Content-Range per chunk, then PUT with the digest. */
  async pushBlobStream(desc: Descriptor, data: Readable): Promise<void> {
    const what = `uploading blob ${desc.digest} to ${this.name} in chunks`;
    const verified = verifyingStream(data, desc, `blob pushed to ${this.name}`);
    let location = await this.startUpload(what);
    let offset = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (): Promise<void> => {
      if (pendingBytes === 0) return;
      const body = Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      const res = await this.client.send({
        method: 'PATCH', url: location, body,
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${offset}-${offset + body.byteLength - 1}`, 'content-length': String(body.byteLength) },
        scopes: this.pushScope, expect: [202], read: 'none', what,
      });
      offset += body.byteLength;
      const next = header(res.headers, 'location');
      if (next) location = this.client.resolveUrl(next);
    };
    for await (const piece of verified) {
      pending.push(piece as Buffer);
      pendingBytes += (piece as Buffer).byteLength;
      if (pendingBytes >= UPLOAD_CHUNK_BYTES) await flush();
    }
    await flush();
    try {
      await this.client.send({
        method: 'PUT', url: this.withDigest(location, desc.digest), headers: { 'content-length': '0' },
        scopes: this.pushScope, expect: [201], read: 'none', what,
      });
    } catch (err) {
      // the closing PUT's answer lost: the blob may be in (the stream is spent, so no new session here)
      if (!mayHaveCommitted(err) || !(await this.blobExists(desc.digest).catch(() => false))) throw err;
    }
  }

  /**
   * Cross-repository mount (distribution-spec: POST /blobs/uploads/?mount=&from=): true when the
   * registry answered 201 (the blob is linked). False when the stores are not one registry, or the
   * registry declined: 202 with an upload session (cancelled here), or 401/403 (no pull right on
   * the source, or mounting not allowed), so the caller uploads the blob instead.
   */
  async mountBlob(desc: Descriptor, from: Target): Promise<boolean> {
    if (!(from instanceof RegistryRepository) || from.client.registry !== this.client.registry || from.repository === this.repository) return false;
    let res;
    try {
      res = await this.client.send({
        method: 'POST', url: `/v2/${this.repository}/blobs/uploads/?mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(from.repository)}`,
        scopes: [...this.pushScope, repositoryScope(from.repository, 'pull')], expect: [201, 202], read: 'none',
        what: `mounting blob ${desc.digest} from ${from.name} into ${this.name}`,
      });
    } catch (err) {
      if (err instanceof RegistryError && (err.status === 401 || err.status === 403)) return false;
      throw err;
    }
    if (res.status === 202) {
      // The registry opened an ordinary upload instead; cancel it so it does not linger.
      const location = header(res.headers, 'location');
      if (location) {
        await this.client.send({ method: 'DELETE', url: location, scopes: this.pushScope, expect: [204, 404], read: 'none', what: 'cancelling upload' }).catch(() => undefined);
      }
      return false;
    }
    return true;
  }

  /**
   * Tags by distribution-spec content discovery: `GET /v2/<name>/tags/list?n=<page>`, following
   * `Link: <...>; rel="next"` pages until `limit` tags. Lexical order, as distribution lists them.
   * A repository that does not exist yet (404 NAME_UNKNOWN) has no tags.
   */
  async listTags(limit: number): Promise<string[]> {
    const tags: string[] = [];
    let url: string | undefined = `/v2/${this.repository}/tags/list?n=${Math.min(limit, 1000)}`;
    while (url && tags.length < limit) {
      const res = await this.client.send({
        method: 'GET', url, scopes: this.pullScope, expect: [200, 404], read: 'buffer', what: `listing the tags of ${this.name}`,
      });
      if (res.status === 404) break;
      let page: string[];
      try {
        const parsed = JSON.parse((res.body ?? Buffer.alloc(0)).toString('utf8')) as { tags?: unknown };
        page = Array.isArray(parsed.tags) ? parsed.tags.filter((t): t is string => typeof t === 'string') : [];
      } catch {
        throw new SlipwayError('REGISTRY_ERROR', `the tag list of ${this.name} is not JSON`);
      }
      tags.push(...page);
      const next = /<([^>]+)>\s*;\s*rel="?next"?/.exec(header(res.headers, 'link') ?? '');
      url = next && page.length > 0 ? new URL(next[1] as string, res.url).toString() : undefined;
    }
    return tags.slice(0, limit);
  }

  async resolve(reference: string): Promise<Descriptor | undefined> {
    const res = await this.client.send({
      method: 'HEAD', url: this.path('manifests', reference), headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') },
      scopes: this.pullScope, expect: [200, 404, ...REDIRECTS], read: 'none', what: `resolving ${reference} in ${this.name}`,
    });
    if (res.status === 404) return undefined;
    // redirected to a storage back-end (whose GET-signed URL refuses a HEAD): GET it and hash it
    if (REDIRECTS.includes(res.status)) return (await this.fetchManifest(reference)).descriptor;
    const digest = header(res.headers, 'docker-content-digest');
    const size = Number.parseInt(header(res.headers, 'content-length') ?? '', 10);
    const mediaType = (header(res.headers, 'content-type') ?? '').split(';')[0]?.trim() ?? '';
    if (digest && isDigest(digest) && Number.isFinite(size)) return { mediaType, digest, size };
    // Registries that omit the digest on HEAD: fetch the manifest and hash it.
    return (await this.fetchManifest(reference)).descriptor;
  }

  async fetchManifest(reference: string): Promise<FetchedManifest> {
    const byDigest = isDigest(reference);
    const res = await this.client.send({
      method: 'GET', url: this.path('manifests', reference), headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') },
      scopes: this.pullScope, expect: [200], read: 'buffer', notFound: byDigest ? 'MANIFEST_UNKNOWN' : 'TAG_UNKNOWN', followRedirects: true,
      what: `fetching manifest ${reference} from ${this.name}`,
    }).catch((err: unknown) => {
      if (err instanceof RegistryError && err.status === 404 && !byDigest) {
        throw new RegistryError('TAG_UNKNOWN', `tag ${reference} does not exist in ${this.name}`, { method: err.method, url: err.url, status: 404 });
      }
      throw err;
    });
    const body = res.body ?? Buffer.alloc(0);
    const digest = sha256Digest(body);
    const expected = byDigest ? reference : header(res.headers, 'docker-content-digest');
    if (expected && expected.startsWith('sha256:') && expected !== digest) {
      throw new SlipwayError('DIGEST_MISMATCH', `manifest ${reference} from ${this.name} has digest ${digest}, expected ${expected}`, { context: { digest: expected, actual: digest } });
    }
    let mediaType = (header(res.headers, 'content-type') ?? '').split(';')[0]?.trim() ?? '';
    try {
      const declared = (JSON.parse(body.toString('utf8')) as { mediaType?: string }).mediaType;
      if (declared) mediaType = declared;
    } catch {
      throw new SlipwayError('MANIFEST_INVALID', `manifest ${reference} from ${this.name} is not JSON`);
    }
    return { descriptor: { mediaType, digest, size: body.byteLength }, body };
  }

  async pushManifest(body: Buffer, mediaType: string, tag?: string): Promise<Descriptor> {
    const digest = sha256Digest(body);
    await this.client.send({
      method: 'PUT', url: this.path('manifests', tag ?? digest), body,
      headers: { 'content-type': mediaType, 'content-length': String(body.byteLength) },
      scopes: this.pushScope, expect: [201], read: 'none', what: `pushing manifest ${tag ?? digest} to ${this.name}`,
    });
    return { mediaType, digest, size: body.byteLength };
  }
}
