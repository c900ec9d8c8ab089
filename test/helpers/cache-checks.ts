/**
 * Checks shared by the chunk-cache tests: what tier 1 holds on disk (and whether the index agrees),
 * a JSON log captured from the cache's logger, and bounds on promises so that a wedged cache fails
 * its own test instead of hanging the file.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { expect } from 'vitest';
import type { ChunkCache } from '../../src/cache/chunk-cache.js';
import { isSlipwayError, type SlipwayError } from '../../src/errors.js';

export interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

/** A stream for `createLogger({ out })` that keeps what was logged, one JSON object a line. */
export class LogCapture extends Writable {
  text = '';
  override _write(chunk: Buffer | string, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.text += chunk.toString();
    done();
  }

  lines(): LogLine[] {
    return this.text.split('\n').filter((l) => l.trim().length > 0).map((l) => JSON.parse(l) as LogLine);
  }

  has(level: string, msg: string): LogLine | undefined {
    return this.lines().find((l) => l.level === level && l.msg === msg);
  }
}

/** Every chunk file under cacheDir/chunks, with its size and whether its bytes hash to its name. */
export function chunkFiles(cacheDir: string): { name: string; size: number; intact: boolean }[] {
  const root = join(cacheDir, 'chunks');
  if (!existsSync(root)) return [];
  const out: { name: string; size: number; intact: boolean }[] = [];
  for (const sub of readdirSync(root)) {
    for (const f of readdirSync(join(root, sub))) {
      const data = readFileSync(join(root, sub, f));
      out.push({ name: f, size: data.byteLength, intact: f.startsWith(sub) && createHash('sha256').update(data).digest('hex') === f });
    }
  }
  return out;
}

/** Names of the files in cacheDir/tmp (half-written chunk files). */
export function tmpFiles(cacheDir: string): string[] {
  const dir = join(cacheDir, 'tmp');
  return existsSync(dir) ? readdirSync(dir) : [];
}

/**
 * Tier 1 as the index sees it agrees with the files: same count, same bytes, every file intact, no
 * temp file. Settle the open disks first (`disk.settle()`): a chunk still being kept (readahead,
 * the rest of a pack) has its file renamed into place a moment before its row is written.
 */
export function expectTier1Consistent(cache: ChunkCache): { chunks: number; bytes: number } {
  const files = chunkFiles(cache.config.cacheDir);
  const stats = cache.stats().disk;
  expect(files.filter((f) => !f.intact)).toEqual([]);
  expect(stats.chunks).toBe(files.length);
  expect(stats.bytes).toBe(files.reduce((s, f) => s + f.size, 0));
  expect(tmpFiles(cache.config.cacheDir)).toEqual([]);
  return { chunks: stats.chunks, bytes: stats.bytes };
}

/** The SlipwayError a promise rejects with; fails the test when it resolves or rejects with anything else. */
export async function rejection(p: Promise<unknown>): Promise<SlipwayError> {
  try {
    await p;
  } catch (err) {
    expect(isSlipwayError(err), `expected a SlipwayError, got ${String(err)}`).toBe(true);
    return err as SlipwayError;
  }
  throw new Error('expected the promise to reject, but it resolved');
}

/** Fail (instead of hanging the file) when a promise does not settle within `ms` milliseconds. */
export async function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
