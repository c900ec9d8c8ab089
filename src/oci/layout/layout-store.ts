import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { SlipwayError, fromFsError } from '../../errors.js';
import { parseDigest, sha256Digest, verifyContent, verifyingStream, isDigest } from '../digest.js';
import type { FetchedManifest, Target } from '../store.js';
import { ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_INDEX, type Descriptor, type ImageIndex } from '../types.js';
import { writeFileAtomic, writeStreamAtomicVerified } from '../../util/atomic-file.js';
import { withDirLock } from '../../util/dir-lock.js';

const LAYOUT_VERSION = '1.0.0';

/**
 * An OCI image-layout directory (image-spec `image-layout.md`): `oci-layout`, `index.json`,
 * `blobs/sha256/<hex>`. Tags are `org.opencontainers.image.ref.name` annotations in index.json,
 * as skopeo and oras write them. Blob writes are crash-safe; index.json updates are serialised
 * with a lock directory and replaced atomically, so concurrent pushes do not lose tags.
 */
export class OciLayoutStore implements Target {
  readonly name: string;

  /**
   * `durable: false` (a cache's metadata, every read of it verified and fetched again when bad):
   * blobs are written atomically but not fsynced (writeAtomic's `durable`).
   */
  constructor(readonly dir: string, private readonly opts: { durable?: boolean } = {}) {
    this.name = `oci:${dir}`;
  }

  private blobPath(digest: string): string {
    const { algorithm, hex } = parseDigest(digest);
    return join(this.dir, 'blobs', algorithm, hex);
  }

  /** Create the layout files when the directory is new; check them when it is not. */
  async init(): Promise<void> {
    await mkdir(join(this.dir, 'blobs', 'sha256'), { recursive: true });
    let layoutText: string | undefined;
    try {
      layoutText = await readFile(join(this.dir, 'oci-layout'), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromFsError(err, join(this.dir, 'oci-layout'), 'reading layout');
    }
    if (layoutText === undefined) {
      await writeFileAtomic(join(this.dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: LAYOUT_VERSION }));
    } else {
      this.checkLayoutFile(layoutText);
    }
    try {
      await stat(join(this.dir, 'index.json'));
    } catch {
      await writeFileAtomic(join(this.dir, 'index.json'), JSON.stringify(emptyIndex()));
    }
  }

  private checkLayoutFile(text: string): void {
    let version: unknown;
    try {
      version = (JSON.parse(text) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
    } catch {
      version = undefined;
    }
    if (typeof version !== 'string' || !version.startsWith('1.')) {
      throw new SlipwayError('LAYOUT_INVALID', `${this.dir}/oci-layout does not declare imageLayoutVersion 1.x`);
    }
  }

  private async readIndex(): Promise<ImageIndex> {
    const path = join(this.dir, 'index.json');
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        if (!(await stat(this.dir).then(() => true, () => false))) {
          // a name mistyped: say so, and what the directory above holds
          throw new SlipwayError('NAME_UNKNOWN', `no image layout at ${this.dir}: the directory does not exist${await layoutsBeside(this.dir)}`, { context: { dir: this.dir } });
        }
        throw new SlipwayError('LAYOUT_INVALID', `${this.dir} is not an OCI image layout (no index.json)`, { context: { dir: this.dir } });
      }
      throw fromFsError(err, path, 'reading layout index');
    }
    try {
      const index = JSON.parse(text) as ImageIndex;
      if (!Array.isArray(index.manifests)) throw new Error('no manifests array');
      return index;
    } catch (err) {
      throw new SlipwayError('LAYOUT_INVALID', `${path} is not a valid image index: ${(err as Error).message}`, { cause: err });
    }
  }

  async blobExists(digest: string): Promise<boolean> {
    try {
      await stat(this.blobPath(digest));
      return true;
    } catch {
      return false;
    }
  }

  private async readBlobFile(digest: string): Promise<Buffer> {
    try {
      return await readFile(this.blobPath(digest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new SlipwayError('BLOB_UNKNOWN', `blob ${digest} is not in ${this.name}`, { context: { digest } });
      }
      throw fromFsError(err, this.blobPath(digest), 'reading blob');
    }
  }

  async fetchBlob(desc: Descriptor): Promise<Buffer> {
    const data = await this.readBlobFile(desc.digest);
    verifyContent(data, desc, `blob ${desc.digest} in ${this.name}`);
    return data;
  }

  async fetchBlobStream(desc: Descriptor): Promise<Readable> {
    const path = this.blobPath(desc.digest);
    if (!(await this.blobExists(desc.digest))) {
      throw new SlipwayError('BLOB_UNKNOWN', `blob ${desc.digest} is not in ${this.name}`, { context: { digest: desc.digest } });
    }
    return verifyingStream(createReadStream(path, { highWaterMark: 1 << 20 }), desc, `blob ${desc.digest} in ${this.name}`);
  }

  async fetchBlobRange(desc: Descriptor, offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > desc.size) {
      throw new SlipwayError('INVALID_ARGUMENT', `range ${offset}+${length} is outside blob ${desc.digest} of ${desc.size} bytes`);
    }
    let handle;
    try {
      handle = await open(this.blobPath(desc.digest), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new SlipwayError('BLOB_UNKNOWN', `blob ${desc.digest} is not in ${this.name}`, { context: { digest: desc.digest } });
      }
      throw fromFsError(err, this.blobPath(desc.digest), 'opening blob');
    }
    try {
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw new SlipwayError('DIGEST_MISMATCH', `blob ${desc.digest} in ${this.name} is shorter than its descriptor says`);
        done += bytesRead;
      }
      return buf;
    } finally {
      await handle.close();
    }
  }

  async pushBlob(desc: Descriptor, data: Buffer): Promise<void> {
    verifyContent(data, desc, `blob pushed to ${this.name}`);
    if (await this.blobExists(desc.digest)) return;
    const path = this.blobPath(desc.digest);
    await layoutWrite(path, 'writing blob', () => writeFileAtomic(path, data, { durable: this.opts.durable !== false }));
  }

  async pushBlobStream(desc: Descriptor, data: Readable): Promise<void> {
    if (await this.blobExists(desc.digest)) {
      data.destroy();
      return;
    }
    const path = this.blobPath(desc.digest);
    // the source's own error (a registry connection cut, a source file unreadable) passes as it is
    await layoutWrite(path, 'writing blob', () => writeStreamAtomicVerified(path, data, desc, `blob pushed to ${this.name}`), () => data.errored);
  }

  async resolve(reference: string): Promise<Descriptor | undefined> {
    const index = await this.readIndex();
    if (isDigest(reference)) {
      const listed = index.manifests.find((m) => m.digest === reference);
      if (listed) return stripRefName(listed);
      return undefined;
    }
    const found = index.manifests.filter((m) => m.annotations?.[ANNOTATION_REF_NAME] === reference).at(-1);
    return found ? stripRefName(found) : undefined;
  }

  async fetchManifest(reference: string): Promise<FetchedManifest> {
    let descriptor = await this.resolve(reference);
    if (!descriptor && isDigest(reference) && (await this.blobExists(reference))) {
      // A manifest stored only as a blob (e.g. a child of an index): its media type is in the body.
      // (read once, its size from what was read: a blob removed since the look is BLOB_UNKNOWN)
      const body = await this.readBlobFile(reference);
      verifyContent(body, { digest: reference }, `blob ${reference} in ${this.name}`);
      const mediaType = (JSON.parse(body.toString('utf8')) as { mediaType?: string }).mediaType ?? '';
      return { descriptor: { mediaType, digest: reference, size: body.byteLength }, body };
    }
    if (!descriptor) {
      throw new SlipwayError(isDigest(reference) ? 'MANIFEST_UNKNOWN' : 'TAG_UNKNOWN', `${isDigest(reference) ? 'manifest' : 'tag'} ${reference} does not exist in ${this.name}`, {
        context: { reference },
      });
    }
    const body = await this.fetchBlob(descriptor);
    return { descriptor, body };
  }

  async pushManifest(body: Buffer, mediaType: string, tag?: string): Promise<Descriptor> {
    const descriptor: Descriptor = { mediaType, digest: sha256Digest(body), size: body.byteLength };
    await this.pushBlob(descriptor, body);
    await withDirLock(join(this.dir, 'index.json.lock'), async () => {
      const index = await this.readIndex();
      const kept = index.manifests.filter((m) => {
        const name = m.annotations?.[ANNOTATION_REF_NAME];
        if (tag !== undefined) return name !== tag;
        // untagged push: do not list the same digest twice
        return !(m.digest === descriptor.digest && name === undefined);
      });
      const entry: Descriptor = { ...descriptor };
      if (tag !== undefined) entry.annotations = { [ANNOTATION_REF_NAME]: tag };
      kept.push(entry);
      index.manifests = kept;
      await this.writeIndex(index);
    });
    return descriptor;
  }

  /** index.json replaced crash-safely (the caller holds its lock). */
  private async writeIndex(index: ImageIndex): Promise<void> {
    const path = join(this.dir, 'index.json');
    await layoutWrite(path, 'writing layout index', () => writeFileAtomic(path, JSON.stringify(index, null, 2)));
  }

  /** The layout's tags (its `org.opencontainers.image.ref.name` annotations), at most `limit`, in index.json order. */
  async listTags(limit: number): Promise<string[]> {
    const index = await this.readIndex().catch((err: unknown) => {
      if (err instanceof SlipwayError && (err.code === 'LAYOUT_INVALID' || err.code === 'NAME_UNKNOWN')) return emptyIndex();
      throw err;
    });
    const tags = index.manifests.map((m) => m.annotations?.[ANNOTATION_REF_NAME]).filter((t): t is string => t !== undefined);
    return [...new Set(tags)].slice(0, limit);
  }

  /** Remove a tag (not the blobs); used by tests and `gc`. */
  async untag(tag: string): Promise<void> {
    await withDirLock(join(this.dir, 'index.json.lock'), async () => {
      const index = await this.readIndex();
      index.manifests = index.manifests.filter((m) => m.annotations?.[ANNOTATION_REF_NAME] !== tag);
      await this.writeIndex(index);
    });
  }

  /** Delete a blob file (tests use it to simulate a store that lost content). */
  async removeBlob(digest: string): Promise<void> {
    await rm(this.blobPath(digest), { force: true });
  }
}

function emptyIndex(): ImageIndex {
  return { schemaVersion: 2, mediaType: MEDIA_TYPE_OCI_INDEX, manifests: [] };
}

function stripRefName(desc: Descriptor): Descriptor {
  const out: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size };
  if (desc.artifactType) out.artifactType = desc.artifactType;
  return out;
}

/**
 * A write into a layout, a system error of which (ENOSPC, EACCES, EROFS...: one with a `syscall`)
 * becomes IO_ERROR naming the file. SlipwayErrors (a blob that does not match its digest), errors
 * that are not the system's, and the source's own error (`sourceError`) pass as they are.
 */
async function layoutWrite(path: string, what: string, write: () => Promise<void>, sourceError: () => unknown = () => undefined): Promise<void> {
  try {
    await write();
  } catch (err) {
    const system = typeof (err as NodeJS.ErrnoException | undefined)?.syscall === 'string';
    throw err instanceof SlipwayError || !system || err === sourceError() ? err : fromFsError(err, path, what);
  }
}

/**
 * For an error about a layout directory that does not exist: the layouts in the directory above
 * it (the names of the embedded store, say), as ` (<parent> holds: a, b)`, at most 12 among its
 * first 256 entries; empty when there are none or the parent cannot be read. (The daemon answers
 * with this too: a client it lets in may boot any of those names anyway.)
 */
async function layoutsBeside(dir: string): Promise<string> {
  const parent = dirname(dir);
  try {
    const names: string[] = [];
    // at most 256 entries looked at (`oci:/tmp/typo` must not stat all of /tmp)
    for (const e of (await readdir(parent, { withFileTypes: true })).slice(0, 256)) {
      if (e.isDirectory() && e.name !== basename(dir) && (await stat(join(parent, e.name, 'index.json')).then(() => true, () => false))) names.push(e.name);
      if (names.length === 12) break;
    }
    return names.length > 0 ? ` (${parent} holds: ${names.sort().join(', ')})` : '';
  } catch {
    return '';
  }
}
