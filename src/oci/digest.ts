import { createHash } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { SlipwayError } from '../errors.js';

const SHA256_RE = /^sha256:[a-f0-9]{64}$/;

export function sha256Digest(data: Uint8Array): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Validate a digest string; slipway only produces and accepts sha256. */
export function parseDigest(digest: string): { algorithm: 'sha256'; hex: string } {
  if (!SHA256_RE.test(digest)) {
    throw new SlipwayError('INVALID_DIGEST', `malformed or unsupported digest ${JSON.stringify(digest)} (want sha256:<64 hex>)`);
  }
  return { algorithm: 'sha256', hex: digest.slice(7) };
}

export function isDigest(s: string): boolean {
  return SHA256_RE.test(s);
}

/** Check bytes against an expected digest (and size, when known); throws DIGEST_MISMATCH naming `what`. */
export function verifyContent(data: Uint8Array, expected: { digest: string; size?: number }, what: string): void {
  if (expected.size !== undefined && data.byteLength !== expected.size) {
    throw new SlipwayError('DIGEST_MISMATCH', `${what}: got ${data.byteLength} bytes, descriptor says ${expected.size} (${expected.digest})`, {
      context: { digest: expected.digest },
    });
  }
  const actual = sha256Digest(data);
  if (actual !== expected.digest) {
    throw new SlipwayError('DIGEST_MISMATCH', `${what}: content has digest ${actual}, expected ${expected.digest}`, {
      context: { digest: expected.digest, actual },
    });
  }
}

/** Content up to this size is embedded in its descriptor by `withEmbeddedData` (about 87 KiB of base64). */
export const MAX_EMBEDDED_BYTES = 64 << 10;

/**
 * `desc` with `data` set to `content` (base64, image-spec v1.1) when it is at most
 * MAX_EMBEDDED_BYTES, else `desc` as it is: a reader then saves the blob's round trip.
 */
export function withEmbeddedData<D extends { digest: string; size: number; data?: string }>(desc: D, content: Uint8Array): D & { data?: string } {
  return content.byteLength <= MAX_EMBEDDED_BYTES ? { ...desc, data: Buffer.from(content).toString('base64') } : desc;
}

/**
 * The content a descriptor embeds (`data`, base64), or undefined when it embeds none or what it
 * embeds is not the content its digest and size name (then the reader fetches the blob, which is
 * verified as any blob is: a manifest's `data` is never trusted over its digest).
 */
export function embeddedContent(desc: { digest: string; size: number; data?: unknown }): Buffer | undefined {
  if (typeof desc.data !== 'string' || desc.data.length > Math.ceil(MAX_EMBEDDED_BYTES / 3) * 4 + 4) return undefined;
  const content = Buffer.from(desc.data, 'base64');
  return content.byteLength === desc.size && sha256Digest(content) === desc.digest ? content : undefined;
}

/**
 * A descriptor's content: what it embeds (`embeddedContent`), else `reader`'s fetch of its blob
 * (verified by the reader, as any blob): how a disk's config and index, a memory snapshot's config
 * and a boot profile are read.
 */
export async function describedContent<D extends { digest: string; size: number; data?: string }>(desc: D, reader: { fetchBlob(d: D): Promise<Buffer> }): Promise<Buffer> {
  return embeddedContent(desc) ?? reader.fetchBlob(desc);
}

/** Pass a stream through, failing it at its end when its bytes do not match `expected`. */
export function verifyingStream(source: Readable, expected: { digest: string; size: number }, what: string): Readable {
  const hash = createHash('sha256');
  let size = 0;
  const check = new Transform({
    transform(piece: Buffer, _enc, done) {
      size += piece.byteLength;
      if (size > expected.size) {
        done(new SlipwayError('DIGEST_MISMATCH', `${what}: more than the ${expected.size} bytes its descriptor says (${expected.digest})`));
        return;
      }
      hash.update(piece);
      done(null, piece);
    },
    flush(done) {
      const actual = `sha256:${hash.digest('hex')}`;
      if (size !== expected.size || actual !== expected.digest) {
        done(new SlipwayError('DIGEST_MISMATCH', `${what}: received ${size} bytes with digest ${actual}, expected ${expected.size} bytes with ${expected.digest}`));
        return;
      }
      done();
    },
  });
  source.on('error', (err) => check.destroy(err));
  return source.pipe(check);
}
