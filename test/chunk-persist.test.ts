/**
 * A decode thread's chunk files: written on the thread, made durable and renamed into place off
 * it (writeAtomicOverlapped), while the thread decodes the next chunk into the same reused buffer.
 * Real worker threads and real files.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkCodec } from '../src/disk/chunk-codec.js';
import { writeAtomic, writeAtomicOverlapped } from '../src/util/atomic-file.js';
import { WorkerPool } from '../src/workers/pool.js';
import { tempDir } from './helpers/temp-dirs.js';

const work = tempDir('slipway-persist-');
const pool = new WorkerPool(2);
const codec = new ChunkCodec();

afterAll(async () => {
  await pool.close();
});

/** A chunk of `n` bytes, half random (so it compresses, but not to nothing), encoded. */
function chunk(n = 256 * 1024): { data: Buffer; stored: Buffer; flags: number; digest: Buffer } {
  const data = Buffer.concat([randomBytes(n / 2), Buffer.alloc(n / 2, 7)]);
  const enc = codec.encode(data, 3);
  return { data, stored: Buffer.from(enc.stored), flags: enc.flags, digest: Buffer.from(enc.digest) };
}

describe('writeAtomicOverlapped', () => {
  it('puts the whole content in place and leaves no temporary file', async () => {
    const dir = mkdtempSync(join(work, 'w-'));
    const data = randomBytes(100_000);
    await writeAtomicOverlapped(join(dir, 'sub', 'final'), data, { tmpPath: join(dir, '.tmp-1') });
    expect(readFileSync(join(dir, 'sub', 'final')).equals(data)).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(['sub']);
  });

  it('rejects when the rename fails (the target is a directory), removing the temporary file', async () => {
    const dir = mkdtempSync(join(work, 'w-'));
    mkdirSync(join(dir, 'final', 'inside'), { recursive: true });
    const err = await writeAtomicOverlapped(join(dir, 'final'), randomBytes(10), { tmpPath: join(dir, '.tmp-2') }).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
    expect(['EISDIR', 'ENOTEMPTY', 'EEXIST']).toContain(err?.code);
    expect(existsSync(join(dir, '.tmp-2'))).toBe(false);
  });

  it('with onVisible: the file is in place, whole, when onVisible is called, before the write resolves (once durable)', async () => {
    const dir = mkdtempSync(join(work, 'w-'));
    const data = randomBytes(100_000);
    const final = join(dir, 'sub', 'final');
    let seen: Buffer | undefined;
    let resolvedFirst: boolean | undefined;
    let resolved = false;
    await writeAtomicOverlapped(final, data, {
      tmpPath: join(dir, '.tmp-v'),
      onVisible: () => {
        seen = readFileSync(final);
        resolvedFirst = resolved;
      },
    }).then(() => {
      resolved = true;
    });
    expect(resolvedFirst).toBe(false);
    expect(seen?.equals(data)).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(['sub']);
  });

  it('noReplace: a file of the same length already in place is kept (its inode, made durable), ours removed; one of another length is replaced', async () => {
    const dir = mkdtempSync(join(work, 'w-'));
    const final = join(dir, 'sub', 'final');
    const first = randomBytes(5000);
    await writeAtomicOverlapped(final, first, { tmpPath: join(dir, '.tmp-a'), noReplace: true });
    const ino = statSync(final).ino;
    // the same chunk again (a second writer), visible-first: kept, said to be visible all the same
    let visible = false;
    await writeAtomicOverlapped(final, Buffer.from(first), { tmpPath: join(dir, '.tmp-b'), noReplace: true, onVisible: () => (visible = true) });
    expect(visible).toBe(true);
    expect(statSync(final).ino).toBe(ino);
    expect(readdirSync(dir)).toEqual(['sub']);
    // a torn file (short) under the name is replaced
    writeFileSync(final, first.subarray(0, 100));
    await writeAtomicOverlapped(final, first, { tmpPath: join(dir, '.tmp-c'), noReplace: true });
    expect(readFileSync(final).equals(first)).toBe(true);
    // writeAtomic's noReplace (the main thread's chunk writes) keeps it too
    const again = statSync(final).ino;
    await writeAtomic(final, (h) => h.writeFile(first), { tmpPath: join(dir, '.tmp-d'), dataOnly: true, syncDir: false, noReplace: true });
    expect(statSync(final).ino).toBe(again);
    expect(readdirSync(dir)).toEqual(['sub']);
  });

  it('noReplace: a directory under the name is no file to keep: the write rejects, its temporary file removed', async () => {
    const dir = mkdtempSync(join(work, 'w-'));
    mkdirSync(join(dir, 'final', 'inside'), { recursive: true });
    for (const onVisible of [undefined, () => undefined]) {
      const err = await writeAtomicOverlapped(join(dir, 'final'), randomBytes(4096), { tmpPath: join(dir, '.tmp-x'), noReplace: true, ...(onVisible ? { onVisible } : {}) }).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
      expect(['EISDIR', 'ENOTEMPTY', 'EEXIST']).toContain(err?.code);
      expect(readdirSync(dir)).toEqual(['final']);
    }
  });

  it('rejects at once when the temporary file exists (it is created exclusively)', async () => {
    const dir = mkdtempSync(join(work, 'w-'));
    await writeAtomicOverlapped(join(dir, 'a'), randomBytes(10), { tmpPath: join(dir, 'a') }).catch(() => undefined);
    const err = await writeAtomicOverlapped(join(dir, 'b'), randomBytes(10), { tmpPath: join(dir, 'a') }).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
    expect(err?.code).toBe('EEXIST');
  });
});

describe('decode threads writing chunk files', () => {
  it('many file-only decodes at once: each file holds its own chunk (the reused buffer is not written over a pending file)', async () => {
    const dir = mkdtempSync(join(work, 'd-'));
    const chunks = Array.from({ length: 24 }, () => chunk());
    const results = await Promise.all(chunks.map((c, i) => pool.decode(c.stored, c.flags, c.data.length, c.digest, `chunk ${i}`, { tmpPath: join(dir, `.tmp-${i}`), finalPath: join(dir, `c${i}`) }, true)));
    for (const [i, r] of results.entries()) {
      expect(r.persisted).toBe(true);
      expect(r.data.length).toBe(0);
      expect(readFileSync(join(dir, `c${i}`)).equals((chunks[i] as { data: Buffer }).data)).toBe(true);
    }
    expect(readdirSync(dir).filter((f) => f.startsWith('.tmp'))).toEqual([]);
  });

  it('a file that cannot be put in place: the bytes come back (decoded again) with the error, for the caller to store', async () => {
    const dir = mkdtempSync(join(work, 'd-'));
    const c = chunk();
    mkdirSync(join(dir, 'taken', 'inside'), { recursive: true });
    // a file-only decode followed at once by another on the same thread, which reuses its buffer
    const other = chunk();
    const single = new WorkerPool(1);
    const [failed, ok] = await Promise.all([
      single.decode(c.stored, c.flags, c.data.length, c.digest, 'failing', { tmpPath: join(dir, '.tmp-a'), finalPath: join(dir, 'taken') }, true),
      single.decode(other.stored, other.flags, other.data.length, other.digest, 'next', { tmpPath: join(dir, '.tmp-b'), finalPath: join(dir, 'next') }, true),
    ]).finally(() => single.close());
    expect(failed.persisted).toBe(false);
    expect(failed.persistError).toBeDefined();
    expect(failed.data.equals(c.data)).toBe(true);
    expect(ok.persisted).toBe(true);
    expect(readFileSync(join(dir, 'next')).equals(other.data)).toBe(true);
    expect(existsSync(join(dir, '.tmp-a'))).toBe(false);
  });

  it('a file-only decode asked to say when its file is visible says so before it answers, the file whole', async () => {
    const dir = mkdtempSync(join(work, 'd-'));
    const c = chunk();
    const finalPath = join(dir, 'f');
    const order: string[] = [];
    let seen: Buffer | undefined;
    const r = await pool
      .decode(c.stored, c.flags, c.data.length, c.digest, 'early', { tmpPath: join(dir, '.tmp'), finalPath }, true, () => {
        order.push('visible');
        seen = readFileSync(finalPath);
      })
      .then((res) => {
        order.push('answer');
        return res;
      });
    expect(order).toEqual(['visible', 'answer']);
    expect(seen?.equals(c.data)).toBe(true);
    expect(r.persisted).toBe(true);
    expect(readdirSync(dir)).toEqual(['f']);
  });

  it('a decode that also returns its bytes gets them with the file in place', async () => {
    const dir = mkdtempSync(join(work, 'd-'));
    const c = chunk();
    const r = await pool.decode(c.stored, c.flags, c.data.length, c.digest, 'both', { tmpPath: join(dir, '.tmp'), finalPath: join(dir, 'f') }, false);
    expect(r.persisted).toBe(true);
    expect(r.data.equals(c.data)).toBe(true);
    expect(readFileSync(join(dir, 'f')).equals(c.data)).toBe(true);
  });
});
