import type { Readable } from 'node:stream';
import type { Descriptor } from './types.js';

/** How a range read goes: see `BlobStore.fetchBlobRange`. */
export interface RangeReadOptions {
  /** given the whole blob (verified) when a server ignored Range and sent it all */
  onWholeBlob?: (blob: Buffer) => void;
  /**
   * The caller has given up on the answer (its deadline passed): the request is cut on the wire,
   * no retry starts, and the read rejects with the signal's reason. Stores that read local files
   * may ignore it.
   */
  signal?: AbortSignal;
}

/**
 * The capability interfaces every OCI store implements: the OCI image-layout directory
 * (src/oci/layout) and a registry repository (src/oci/registry). Reads are verified against
 * their digest by the implementation; a byte range of a blob cannot be, so its caller checks
 * what it reads out of it (slipway chunks carry their own digest).
 */
export interface BlobStore {
  blobExists(digest: string): Promise<boolean>;
  /** The whole blob, verified against `desc.digest` and `desc.size`. */
  fetchBlob(desc: Descriptor): Promise<Buffer>;
  /** A stream of the blob that fails with DIGEST_MISMATCH at its end if the content is wrong. */
  fetchBlobStream(desc: Descriptor): Promise<Readable>;
  /**
   * `length` bytes at `offset` of a blob: one Range request on a registry. A server that ignores
   * Range sends the whole blob: it is verified, handed to `opts.onWholeBlob`, and sliced.
   */
  fetchBlobRange(desc: Descriptor, offset: number, length: number, opts?: RangeReadOptions): Promise<Buffer>;
  /**
   * The same range handed over as its bytes arrive (in order, in pieces of any size), for stores
   * whose bytes take time to come (a registry): a reader can use the first bytes before the last
   * have come. The iterable ends early on a short answer (the caller counts) and throws when the
   * transfer fails. Stores that read local files need not offer it.
   */
  fetchBlobRangeStream?(desc: Descriptor, offset: number, length: number, opts?: RangeReadOptions): Promise<AsyncIterable<Buffer> | Iterable<Buffer>>;
  /** Store a blob; the store checks `data` against `desc` before it becomes visible. */
  pushBlob(desc: Descriptor, data: Buffer): Promise<void>;
  /** Store a blob from a stream of known descriptor (large blobs, copy). */
  pushBlobStream(desc: Descriptor, data: Readable): Promise<void>;
}

export interface FetchedManifest {
  descriptor: Descriptor;
  body: Buffer;
}

export interface ManifestStore {
  /** What a tag or digest points to now, or undefined when the tag does not exist. */
  resolve(reference: string): Promise<Descriptor | undefined>;
  /** A manifest by tag or digest; by digest it is verified, by tag its digest is computed. */
  fetchManifest(reference: string): Promise<FetchedManifest>;
  /** Store a manifest and, when `tag` is given, point the tag at it (the last step of a push). */
  pushManifest(body: Buffer, mediaType: string, tag?: string): Promise<Descriptor>;
}

export interface Target extends BlobStore, ManifestStore {
  /** Human-readable name, e.g. `oci:/var/lib/slipway/layout` or `127.0.0.1:5000/disks/ci` */
  readonly name: string;
  /**
   * Make a blob from another repository of the same registry appear here without copying its
   * bytes. Returns false when the store cannot (different registry, or mount refused).
   */
  mountBlob?(desc: Descriptor, from: Target): Promise<boolean>;
  /**
   * The tags of this repository (distribution-spec "content discovery", `GET /v2/<name>/tags/list`
   * with `Link` pagination; a layout's `org.opencontainers.image.ref.name` annotations), at most
   * `limit` of them, in the store's order (lexical on distribution). An empty array when the
   * repository does not exist yet.
   */
  listTags?(limit: number): Promise<string[]>;
  /**
   * Open up to `connections` connections to the store's server ahead of a burst of reads (a cold
   * disk's first boot), so that no read of the burst waits for a handshake. Resolves with how many
   * it opened; never rejects. Stores without connections (a local layout) leave it out.
   */
  preconnect?(connections: number): Promise<number>;
  close?(): Promise<void>;
}
