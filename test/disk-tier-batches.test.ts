/**
 * Tier 1's index writes done in batches, a batch a turn of the event loop (and the sweep of files
 * without rows on the first open after the host restarts):
 * - `adoptSoon`: chunk files a worker thread has put in place get their rows in one transaction
 *   per turn; each caller learns its own result, and closing the tier writes the rows still waiting;
 * - `pin`: a disk with thousands of chunks has its first PIN_BATCH pins at once, the rest a batch a
 *   turn; an unpin stops them, and closing the tier writes those held for other processes.
 * Real files and a real SQLite index.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
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

describe('the first open after the host restarts', () => {
  it('removes chunk files without a row, however new (put in place before they were durable, they may be torn); within a boot they stay', async () => {
    const dir = join(work, `c${++dirs}`);
    const open = (bootId: string): DiskTier => new DiskTier({ cacheDir: dir, budgetBytes: 1 << 30, lowWatermark: 0.8, logger: createLogger({ level: 'error' }), bootId });
    const t1 = open('boot-1');
    expect(t1.visibleFirst).toBe(true);
    const kept = placeChunk(t1);
    expect(await t1.adoptSoon(kept.hex, kept.size)).toBe(true);
    // in place, its row never written: the host went down before the file was durable
    const torn = placeChunk(t1);
    // and what is not a chunk file: left alone (a directory under a chunk's name would make a
    // careless sweep throw, and every open of the boot with it)
    const prefix = dirname(t1.chunkPath(torn.hex));
    writeFileSync(join(prefix, 'notes.txt'), 'not a chunk');
    mkdirSync(join(prefix, 'f'.repeat(64)));
    expect(t1.linksWork).toBe(true);
    t1.close();
    // another process of the same boot: a file without a row may be a write under way, left be
    const t2 = open('boot-1');
    expect(existsSync(t2.chunkPath(torn.hex))).toBe(true);
    t2.close();
    // the first open after a restart removes it, and keeps the chunk with a row
    const t3 = open('boot-2');
    expect(existsSync(t3.chunkPath(torn.hex))).toBe(false);
    expect(existsSync(join(prefix, 'notes.txt'))).toBe(true);
    expect(existsSync(join(prefix, 'f'.repeat(64)))).toBe(true);
    // the probe for hard links leaves nothing behind
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]);
    expect('data' in t3.get(kept.hex)).toBe(true);
    const later = placeChunk(t3);
    t3.close();
    // the boot is recorded: the next open of it sweeps nothing
    const t4 = open('boot-2');
    expect(existsSync(t4.chunkPath(later.hex))).toBe(true);
    expect(t4.stats().chunks).toBe(1);
    t4.close();
  });

  it('without a boot id to go by, files are durable before they are in place (visibleFirst off) and nothing is swept', () => {
    const dir = join(work, `c${++dirs}`);
    const t1 = new DiskTier({ cacheDir: dir, budgetBytes: 1 << 30, lowWatermark: 0.8, logger: createLogger({ level: 'error' }), bootId: null });
    expect(t1.visibleFirst).toBe(false);
    const stray = placeChunk(t1);
    t1.close();
    const t2 = new DiskTier({ cacheDir: dir, budgetBytes: 1 << 30, lowWatermark: 0.8, logger: createLogger({ level: 'error' }), bootId: null });
    expect(existsSync(t2.chunkPath(stray.hex))).toBe(true);
    t2.close();
  });
});
