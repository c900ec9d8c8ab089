/**
 * The distribution protocol's rough edges (issue 13), each against a real docker-registry behind
 * a proxy that does what registries and networks do: an upload whose answer is lost after the
 * registry committed it, refused cross-repository mounts (401, 403, 202 with a session), storage
 * back-ends behind redirects signed for GET only, and 429 with Retry-After on every request kind.
 */
import { describe, expect, it } from 'vitest';
import { closeSync, openSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { openDiskArtifact } from '../src/disk/artifact.js';
import { pullDisk } from '../src/disk/pull.js';
import { pushDisk } from '../src/disk/push.js';
import { pushSnapshot } from '../src/disk/snapshot.js';
import { RegistryError, SlipwayError } from '../src/errors.js';
import { copyImage } from '../src/oci/copy.js';
import { Targets, withTargets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { RegistryClient } from '../src/oci/registry/transport.js';
import { within } from './helpers/cache-checks.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { makeSparse, sha256File, tempDir } from './helpers/images.js';
import { startRedirectProxy } from './helpers/redirect-proxy.js';
import { registryBed } from './helpers/registry-bed.js';
import { startThrottleProxy, type RequestKind } from './helpers/throttle-proxy.js';

const bed = registryBed();
const work = tempDir('slipway-edges-');
const MiB = 1 << 20;
let images = 0;
const image = (mib = 3) => makeSparse(join(work, `img-${images++}.img`), mib * MiB, [{ offset: 0, length: MiB }, { offset: 2 * MiB, length: MiB }]);


async function pullsBack(targets: Targets, ref: string, file: string): Promise<void> {
  const r = parseRef(ref);
  const target = await targets.open(r);
  const out = join(work, `out-${randomBytes(4).toString('hex')}.img`);
  await pullDisk({ target, disk: await openDiskArtifact(target, r.tag ?? 'latest'), outFile: out, pool: bed.pool });
  expect(sha256File(out)).toBe(sha256File(file));
}

describe('a blob upload whose answer was lost', () => {
  it.each([
    ['the first commit', 1],
    ['every commit of one blob', Number.MAX_SAFE_INTEGER],
  ])('is not replayed into BLOB_UPLOAD_UNKNOWN: the push checks the blob and goes on (%s)', async (_what, maxFaults) => {
    const img = image();
    const proxy = await startFaultProxy({ target: bed.registry.host, mode: 'lose-answer', passBlobPuts: 1, only: 'one-blob', maxFaults });
    try {
      await withTargets({}, async (targets) => {
        const target = await targets.open(parseRef(`${proxy.host}/edges/lost:v1`));
        await pushDisk({ file: img, target, tag: 'v1', pool: bed.pool, packSizeBytes: MiB });
        const lost = proxy.requests.filter((r) => r.outcome === 'lose-answer');
        expect(lost.length).toBeGreaterThanOrEqual(1);
        expect(lost[0]?.status).toBe(201); // the registry did commit it
        await pullsBack(targets, `${bed.registry.host}/edges/lost:v1`, img);
      });
    } finally {
      await proxy.stop();
    }
  });
});

describe('a refused cross-repository mount falls back to an upload', () => {
  it.each(['401', '403', '202'] as const)('in copy (mount answered %s)', async (refusal) => {
    const img = image();
    await withTargets({}, async (direct) => pushDisk({ file: img, target: await direct.open(parseRef(`${bed.registry.host}/edges/src-${refusal}:v1`)), tag: 'v1', pool: bed.pool }));
    const proxy = await startFaultProxy({ target: bed.registry.host, mode: '500', passBlobPuts: Number.MAX_SAFE_INTEGER, refuseMounts: refusal });
    try {
      await withTargets({}, async (targets) => {
        const src = await targets.open(parseRef(`${proxy.host}/edges/src-${refusal}:v1`));
        const dst = await targets.open(parseRef(`${proxy.host}/edges/dst-${refusal}:v1`));
        const result = await copyImage({ src, srcReference: 'v1', dst, dstTag: 'v1' });
        expect(proxy.requests.filter((r) => r.outcome === 'mount-refused').length).toBeGreaterThanOrEqual(3);
        expect(result.mountedBlobs).toBe(0);
        expect(result.copiedBlobs).toBeGreaterThanOrEqual(3);
        await pullsBack(targets, `${bed.registry.host}/edges/dst-${refusal}:v1`, img);
      });
    } finally {
      await proxy.stop();
    }
  });

  it('in a snapshot pushed into another repository (mount answered 403)', async () => {
    const img = image(4);
    const proxy = await startFaultProxy({ target: bed.registry.host, mode: '500', passBlobPuts: Number.MAX_SAFE_INTEGER, refuseMounts: '403' });
    try {
      await withTargets({}, async (targets) => {
        const baseTarget = await targets.open(parseRef(`${proxy.host}/edges/snap-base:v1`));
        await pushDisk({ file: img, target: baseTarget, tag: 'v1', pool: bed.pool });
        const base = await openDiskArtifact(baseTarget, 'v1');
        // the guest wrote chunk 1: the staging file holds it, sparse elsewhere; the snapshot is the base with chunk 1 changed
        const chunk = base.index.chunkSizeBytes;
        const staging = makeSparse(join(work, 'staging.img'), 4 * MiB, []);
        const fresh = randomBytes(chunk);
        const sfd = openSync(staging, 'r+');
        writeSync(sfd, fresh, 0, chunk, chunk);
        closeSync(sfd);
        const expected = join(work, 'snap-expected.img');
        const { copyFileSync } = await import('node:fs');
        copyFileSync(img, expected);
        const efd = openSync(expected, 'r+');
        writeSync(efd, fresh, 0, chunk, chunk);
        closeSync(efd);
        const target = await targets.open(parseRef(`${proxy.host}/edges/snap-other:s1`));
        const result = await pushSnapshot({
          base, baseTarget, staging, target, tag: 's1', pool: bed.pool,
          dirty: { sizeBytes: 4 * MiB, chunkSizeBytes: chunk, chunkCount: base.index.chunkCount, chunks: [1] },
        });
        expect(result.baseBlobsCopied).toBeGreaterThanOrEqual(3);
        expect(proxy.requests.filter((r) => r.outcome === 'mount-refused').length).toBeGreaterThanOrEqual(3);
        await pullsBack(targets, `${bed.registry.host}/edges/snap-other:s1`, expected);
      });
    } finally {
      await proxy.stop();
    }
  });
});

describe('a registry whose storage back-end is behind redirects (S3/GCS signed URLs)', () => {
  it('HEADs are not sent to URLs signed for GET, redirected manifests and blobs are read, no credentials go to storage', async () => {
    const img = image();
    const proxy = await startRedirectProxy({ target: bed.registry.host, manifests: true });
    try {
      await withTargets({}, async (targets) => {
        const target = await targets.open(parseRef(`${proxy.host}/edges/redirect:v1`));
        await pushDisk({ file: img, target, tag: 'v1', pool: bed.pool, packSizeBytes: MiB });
        // a second push of the same image: every blob HEAD and the tag's manifest are redirected now
        const again = await pushDisk({ file: img, target, tag: 'v1', pool: bed.pool, packSizeBytes: MiB });
        expect(again.uploadedPacks).toBe(0);
        expect(await target.resolve('v1')).toMatchObject({ digest: again.manifest.digest });
        await pullsBack(targets, `${proxy.host}/edges/redirect:v1`, img);
        const disk = await openDiskArtifact(target, 'v1');
        const pack = disk.index.packs[0];
        if (!pack) throw new Error('no pack');
        const entry = disk.index.entries.find((e) => e.pack === 0);
        if (!entry) throw new Error('no entry');
        expect((await target.fetchBlobRange(pack, entry.offset, entry.storedLength)).byteLength).toBe(entry.storedLength);
      });
      expect(proxy.redirected.some((r) => r.method === 'HEAD' && r.path.includes('/blobs/'))).toBe(true);
      expect(proxy.redirected.some((r) => r.path.includes('/manifests/'))).toBe(true);
      expect(proxy.storage.filter((r) => r.method === 'HEAD')).toEqual([]);
      expect(proxy.storage.filter((r) => r.authorization)).toEqual([]);
      expect(proxy.storage.filter((r) => r.path.includes('/manifests/')).length).toBeGreaterThan(0);
      expect(proxy.storage.every((r) => r.status === 200 || r.status === 206)).toBe(true);
    } finally {
      await proxy.stop();
    }
  });
});

describe('429 Too Many Requests with Retry-After', () => {
  it('is waited out on every request kind, pushes too, whether Retry-After is seconds or an HTTP-date', async () => {
    const img = image();
    const dates: RequestKind[] = ['blob-head', 'upload-put', 'manifest-put', 'blob-get'];
    const proxy = await startThrottleProxy({ target: bed.registry.host, windowS: (k) => (dates.includes(k) ? 3 : 1), form: (k) => (dates.includes(k) ? 'date' : 'seconds') });
    try {
      await withTargets({}, async (targets) => {
        const ref = `${proxy.host}/edges/throttled:v1`;
        const target = await targets.open(parseRef(ref));
        await pushDisk({ file: img, target, tag: 'v1', pool: bed.pool, packSizeBytes: MiB });
        await pullsBack(targets, ref, img);
      });
      const kinds: RequestKind[] = ['blob-head', 'blob-get', 'upload-post', 'upload-put', 'manifest-get', 'manifest-put', 'tags'];
      for (const k of kinds) {
        const w = proxy.windows.get(k);
        expect(w?.throttled, k).toBeGreaterThan(0);
        expect(w?.forwardedAt.length, k).toBeGreaterThan(0);
        // nothing came back before the moment Retry-After named
        expect(Math.min(...(w?.forwardedAt ?? [])), k).toBeGreaterThanOrEqual(w?.until ?? 0);
      }
    } finally {
      await proxy.stop();
    }
  }, 60_000);
});

describe('a registry error body', () => {
  it('is read for the spec\'s codes only, and every entry of errors[] is kept', async () => {
    const errors = [{ code: 'toString', message: 'not a spec code' }, { code: 'MANIFEST_INVALID', message: 'bad layer' }, { code: 'DENIED', message: 'and no' }];
    const server = createServer((_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    const client = new RegistryClient(`127.0.0.1:${port}`);
    try {
      const err = await client.send({ method: 'GET', url: '/v2/x/manifests/y', scopes: [], expect: [200], read: 'buffer', what: 'manifest x:y' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RegistryError);
      const reg = err as RegistryError;
      expect(reg.code).toBe('MANIFEST_INVALID');
      expect(reg.errors).toEqual(errors);
      expect(reg.message).toContain('not a spec code; MANIFEST_INVALID: bad layer; DENIED: and no');
    } finally {
      await client.close();
      server.close();
    }
  });
});

describe('a Range GET answered with the whole blob (Range ignored)', () => {
  it('is verified whole before its slice is used; a body running past the blob is refused without being kept', async () => {
    const blob = randomBytes(64 << 10);
    const { createHash } = await import('node:crypto');
    const desc = { mediaType: 'application/octet-stream', digest: `sha256:${createHash('sha256').update(blob).digest('hex')}`, size: blob.length };
    let extra = 0;
    const server = createServer((_req, res) => {
      // Range ignored: 200 and the whole blob, then (when asked) more bytes than the blob has
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(blob);
      if (extra > 0) res.write(randomBytes(extra));
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    const targets = new Targets();
    try {
      const target = await targets.open(parseRef(`127.0.0.1:${port}/x/y:z`));
      let whole: Buffer | undefined;
      const body = await (target.fetchBlobRangeStream as NonNullable<typeof target.fetchBlobRangeStream>).call(target, desc, 1000, 5000, { onWholeBlob: (b) => (whole = b) });
      const pieces: Buffer[] = [];
      for await (const p of body) pieces.push(p);
      expect(Buffer.concat(pieces).equals(blob.subarray(1000, 6000))).toBe(true);
      expect(whole?.equals(blob)).toBe(true);
      extra = 10 << 20;
      const err = await (target.fetchBlobRangeStream as NonNullable<typeof target.fetchBlobRangeStream>).call(target, desc, 1000, 5000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RegistryError);
      expect((err as RegistryError).code).toBe('DIGEST_MISMATCH');
      expect((err as RegistryError).message).toMatch(/runs past its 65536 bytes/);
    } finally {
      await targets.close();
      server.close();
    }
  });
});

describe('a range read given up on (its signal aborted) while it waits for a bearer token', () => {
  it.each([
    ['never answers', 'hang'],
    ['answers 503 with Retry-After: 30', '503'],
  ] as const)('ends at once with the signal\'s reason when the token service %s: the token request is cut, not retried', async (_what, mode) => {
    const tokenAsks: { closed: Promise<void> }[] = [];
    const server = createServer((req, res) => {
      const { port } = server.address() as { port: number };
      if (req.url?.startsWith('/token')) {
        tokenAsks.push({ closed: new Promise<void>((resolve) => req.socket.once('close', () => resolve())) });
        if (mode === '503') {
          res.writeHead(503, { 'retry-after': '30', 'content-type': 'application/json' });
          res.end('{"errors":[{"code":"UNAVAILABLE","message":"token service unavailable"}]}');
        }
        return; // 'hang': no answer, ever
      }
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="edges"`, 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    const targets = new Targets();
    try {
      const target = await targets.open(parseRef(`127.0.0.1:${port}/x/y:z`));
      const desc = { mediaType: 'application/octet-stream', digest: `sha256:${'0'.repeat(64)}`, size: 1 << 20 };
      const reason = new SlipwayError('REGISTRY_UNREACHABLE', 'the fetch deadline passed');
      const abort = new AbortController();
      // the caller's deadline, 300 ms on: the token service has its request by then
      setTimeout(() => abort.abort(reason), 300);
      const err = await within(3000, target.fetchBlobRange(desc, 0, 4096, { signal: abort.signal }).then(() => undefined, (e: unknown) => e), 'the aborted range read');
      expect(err).toBe(reason);
      expect(tokenAsks.length).toBe(1);
      // the hung token request's connection is closed by the client, not left to its timeout
      if (mode === 'hang') await within(2000, tokenAsks[0]?.closed ?? Promise.reject(new Error('no token request')), 'the token request being cut');
    } finally {
      await targets.close();
      server.closeAllConnections();
      server.close();
    }
  });
});
