/**
 * Tier 1's index writes done in batches, a batch a turn of the event loop:
 * - `adoptSoon`: chunk files a worker thread has put in place get their rows in one transaction
 *   per turn; each caller learns its own result, and closing the tier writes the rows still waiting;
 * - `pin`: a disk with thousands of chunks has its first PIN_BATCH pins at once, the rest a batch a
 *   turn; an unpin stops them, and closing the tier writes those held for other processes.
 * Real files and a real SQLite index.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DiskTier, PIN_BATCH } from '../src/cache/disk-tier.js';
import { createLogger } from '../src/util/log.js';
import { tempDir } from './helpers/images.js';

const work = tempDir('slipway-adopt-');
afterAll(() => rmSync(work, { recursive: true, force: true }));
let dirs = 0;

function tier(cacheDir: string): DiskTier {
  return new DiskTier({ cacheDir, budgetBytes: 1 << 30, lowWatermark: 0.8, logger: createLogger({ level: 'error' }) });
}

/** A chunk file in place, as a worker thread leaves it (written, renamed), without its row. */
function placeChunk(t: DiskTier): { hex: string; size: number } {
  const data = randomBytes(1000 + Math.floor(Math.random() * 1000));
  const hex = createHash('sha256').update(data).digest('hex');
  const path = t.chunkPath(hex);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, data);
  return { hex, size: data.byteLength };
}

describe('adoptSoon', () => {
  it('gives every chunk adopted in one turn its row, and each caller its result', async () => {
    const t = tier(join(work, `c${++dirs}`));
    const chunks = Array.from({ length: 50 }, () => placeChunk(t));
    const pending = chunks.map((c) => t.adoptSoon(c.hex, c.size));
    // not yet: the rows are written together, after this turn
    expect(t.stats().chunks).toBe(0);
    expect(await Promise.all(pending)).toEqual(chunks.map(() => true));
    expect(t.stats()).toMatchObject({ chunks: 50, bytes: chunks.reduce((n, c) => n + c.size, 0) });
    for (const c of chunks) expect('data' in t.get(c.hex)).toBe(true);
    // a chunk adopted twice (two fetches of it) has one row
    expect(await t.adoptSoon(chunks[0]?.hex as string, chunks[0]?.size as number)).toBe(true);
    expect(t.stats().chunks).toBe(50);
    t.close();
  });

  it('closing the tier writes the rows still waiting', async () => {
    const dir = join(work, `c${++dirs}`);
    const t = tier(dir);
    const chunks = Array.from({ length: 5 }, () => placeChunk(t));
    const pending = chunks.map((c) => t.adoptSoon(c.hex, c.size));
    t.close();
    expect(await Promise.all(pending)).toEqual(chunks.map(() => true));
    const again = tier(dir);
    expect(again.stats().chunks).toBe(5);
    again.close();
  });
});

/** Let the event loop turn until `done` holds (at most `turns` turns): no timers, no sleeps. */
async function turnsUntil(done: () => boolean, turns = 1000): Promise<void> {
  for (let i = 0; i < turns && !done(); i++) await new Promise((r) => setImmediate(r));
}

describe('pin', () => {
  const digests = (n: number): string[] => Array.from({ length: n }, () => randomBytes(32).toString('hex'));

  it('pins the first batch at once and the rest a batch a turn; an unpin stops it', async () => {
    const t = tier(join(work, `c${++dirs}`));
    const n = 4 * PIN_BATCH + 7;
    const holder = t.pin('a big disk', digests(n));
    expect(t.stats().pinnedChunks).toBe(PIN_BATCH);
    await turnsUntil(() => t.stats().pinnedChunks === n);
    expect(t.stats().pinnedChunks).toBe(n);
    t.unpin(holder);
    expect(t.stats().pinnedChunks).toBe(0);

    const other = t.pin('another', digests(n));
    await new Promise((r) => setImmediate(r));
    t.unpin(other);
    await turnsUntil(() => false, 10);
    expect(t.stats()).toMatchObject({ pinnedChunks: 0, holders: 0 });
    t.close();
  });

  it("closing the tier writes the rest of a pin held for another process, and drops its own", async () => {
    const dir = join(work, `c${++dirs}`);
    const t = tier(dir);
    const n = 3 * PIN_BATCH;
    t.pin("a backend's disk", digests(n), process.ppid);
    t.pin('its own', digests(n));
    t.close();
    const again = tier(dir);
    expect(again.stats()).toMatchObject({ pinnedChunks: n, holders: 1 });
    again.close();
  });
});
