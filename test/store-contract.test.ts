/**
 * One contract suite, run against every store: the OCI image-layout directory and a repository
 * in a real registry. Each store must verify what it reads and refuse what does not match.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { sha256Digest } from '../src/oci/digest.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import type { Target } from '../src/oci/store.js';
import { MEDIA_TYPE_OCI_MANIFEST, type Descriptor } from '../src/oci/types.js';
import { isSlipwayError, isTransient } from '../src/errors.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { tempDir } from './helpers/images.js';

function blob(data: Buffer): Descriptor {
  return { mediaType: 'application/octet-stream', digest: sha256Digest(data), size: data.byteLength };
}

let registry: TestRegistry;
const targets = new Targets();

beforeAll(async () => {
  registry = await startRegistry();
});
afterAll(async () => {
  await targets.close();
  await registry?.stop();
});

const stores: [string, () => Promise<Target>][] = [
  ['layout', () => targets.open(parseRef(`oci:${join(tempDir(), 'layout')}`), { createLayout: true })],
  ['registry', () => targets.open(parseRef(`${registry.host}/contract/r${randomBytes(4).toString('hex')}`))],
];

describe.each(stores)('store contract: %s', (_name, open) => {
  it('stores a blob, reports it present, and reads it back verified', async () => {
    const store = await open();
    const data = randomBytes(100_000);
    const desc = blob(data);
    expect(await store.blobExists(desc.digest)).toBe(false);
    await store.pushBlob(desc, data);
    expect(await store.blobExists(desc.digest)).toBe(true);
    expect((await store.fetchBlob(desc)).equals(data)).toBe(true);
  });

  it('reads a byte range of a blob', async () => {
    const store = await open();
    const data = randomBytes(50_000);
    const desc = blob(data);
    await store.pushBlob(desc, data);
    const part = await store.fetchBlobRange(desc, 1234, 5000);
    expect(part.equals(data.subarray(1234, 6234))).toBe(true);
  });

  it('streams a large blob in and out (chunked upload on registries)', async () => {
    const store = await open();
    const data = randomBytes(70 << 20);
    const desc = blob(data);
    await store.pushBlobStream(desc, Readable.from([data.subarray(0, 1 << 20), data.subarray(1 << 20)]));
    const chunks: Buffer[] = [];
    for await (const c of await store.fetchBlobStream(desc)) chunks.push(c as Buffer);
    expect(sha256Digest(Buffer.concat(chunks))).toBe(desc.digest);
  });

  it('refuses a blob whose bytes do not match its descriptor', async () => {
    const store = await open();
    const data = randomBytes(1000);
    const wrong = { ...blob(data), digest: sha256Digest(randomBytes(10)) };
    await expect(store.pushBlob(wrong, data)).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
    expect(await store.blobExists(wrong.digest)).toBe(false);
  });

  it('reports a missing blob as BLOB_UNKNOWN', async () => {
    const store = await open();
    await expect(store.fetchBlob(blob(randomBytes(10)))).rejects.toMatchObject({ code: 'BLOB_UNKNOWN' });
  });

  it('pushes a manifest under a tag, resolves it, and moves the tag', async () => {
    const store = await open();
    const config = Buffer.from('{}');
    const cdesc = { ...blob(config), mediaType: 'application/vnd.oci.empty.v1+json' };
    await store.pushBlob(cdesc, config);
    const m1 = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE_OCI_MANIFEST, config: cdesc, layers: [], annotations: { n: '1' } }));
    const m2 = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE_OCI_MANIFEST, config: cdesc, layers: [], annotations: { n: '2' } }));
    expect(await store.resolve('t')).toBeUndefined();
    const d1 = await store.pushManifest(m1, MEDIA_TYPE_OCI_MANIFEST, 't');
    expect((await store.resolve('t'))?.digest).toBe(d1.digest);
    const got = await store.fetchManifest('t');
    expect(got.body.equals(m1)).toBe(true);
    expect(got.descriptor.digest).toBe(sha256Digest(m1));
    const d2 = await store.pushManifest(m2, MEDIA_TYPE_OCI_MANIFEST, 't');
    expect((await store.resolve('t'))?.digest).toBe(d2.digest);
    expect((await store.fetchManifest(d1.digest)).body.equals(m1)).toBe(true);
  });

  it('reports a tag that does not exist as TAG_UNKNOWN', async () => {
    const store = await open();
    const err = await store.fetchManifest('nope').catch((e: unknown) => e);
    expect(isSlipwayError(err, 'TAG_UNKNOWN')).toBe(true);
  });
});

describe('an OCI layout fed by a stream that fails', () => {
  it('passes the source\'s own error on as it is (a cut connection stays transient), and stores nothing', async () => {
    const store = await stores[0]![1]();
    const data = randomBytes(2 << 20);
    const desc = blob(data);
    const cut = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET', syscall: 'read', errno: -104 });
    // cut once the store is reading it (its reader then listens for the error), after the first MiB
    let reads = 0;
    const source = new Readable({
      read() {
        if (reads++ === 0) this.push(data.subarray(0, 1 << 20));
        else this.destroy(cut);
      },
    });
    const err = await store.pushBlobStream(desc, source).catch((e: unknown) => e);
    expect(err).toBe(cut);
    expect(isTransient(err)).toBe(true);
    expect(await store.blobExists(desc.digest)).toBe(false);
  });
});
