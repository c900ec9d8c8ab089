import { randomBytes } from 'node:crypto';
import { createHash } from 'node:crypto';
import { open, rename, rm, mkdir } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';
import type { Readable } from 'node:stream';
import { SlipwayError } from '../errors.js';

function tempPathFor(finalPath: string): string {
  return join(dirname(finalPath), `.tmp-${basename(finalPath)}-${process.pid}-${randomBytes(6).toString('hex')}`);
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Crash-safe write: the bytes go to a temporary file beside the target, are fsynced, and are
 * renamed into place; the directory is fsynced so the rename survives a crash. A reader sees the
 * old content or the new, never a part. The temporary file is removed on any failure.
 */
export async function writeFileAtomic(finalPath: string, data: Uint8Array | string): Promise<void> {
  await mkdir(dirname(finalPath), { recursive: true });
  const tmp = tempPathFor(finalPath);
  let renamed = false;
  try {
    const handle = await open(tmp, 'wx', 0o644);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, finalPath);
    renamed = true;
    await fsyncDir(dirname(finalPath));
  } finally {
    if (!renamed) await rm(tmp, { force: true });
  }
}

/**
 * Stream into a file atomically, checking the sha256 and size of what arrived before the rename.
 * On a mismatch nothing is left behind and DIGEST_MISMATCH names `what`.
 */
export async function writeStreamAtomicVerified(
  finalPath: string,
  source: Readable,
  expected: { digest: string; size: number },
  what: string,
): Promise<void> {
  await mkdir(dirname(finalPath), { recursive: true });
  const tmp = tempPathFor(finalPath);
  let renamed = false;
  try {
    const handle = await open(tmp, 'wx', 0o644);
    const hash = createHash('sha256');
    let size = 0;
    try {
      for await (const piece of source) {
        const buf = piece as Buffer;
        hash.update(buf);
        size += buf.byteLength;
        if (size > expected.size) break;
        await handle.write(buf);
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
    const digest = `sha256:${hash.digest('hex')}`;
    if (size !== expected.size || digest !== expected.digest) {
      throw new SlipwayError('DIGEST_MISMATCH', `${what}: received ${size} bytes with digest ${digest}, expected ${expected.size} bytes with ${expected.digest}`, {
        context: { digest: expected.digest },
      });
    }
    await rename(tmp, finalPath);
    renamed = true;
    await fsyncDir(dirname(finalPath));
  } finally {
    if (!renamed) await rm(tmp, { force: true });
    source.destroy();
  }
}
