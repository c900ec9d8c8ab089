/**
 * Tier 1's batched adopt (`DiskTier.adoptSoon`): chunk files a worker thread has put in place get
 * their rows in one transaction per turn of the event loop; each caller learns its own result, and
 * closing the tier writes the rows still waiting. Real files and a real SQLite index.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DiskTier } from '../src/cache/disk-tier.js';
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
