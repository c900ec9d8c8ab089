/**
 * The fetch-ahead planners on their own (pure functions of the misses they are told of): dense
 * regions, and the speculation windows they work with. How a disk fetches what they plan, and
 * that it never delays a demand miss, is in speculation.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { DENSE_REGION_BOUNDS, DenseRegions, SPECULATION_WINDOWS, Speculation } from '../src/cache/fetch-ahead.js';

describe('DenseRegions', () => {
  const { misses, reach, margin } = DENSE_REGION_BOUNDS;

  it('plans nothing until enough misses lie close together, then their span widened by the margin', () => {
    const plan = new DenseRegions();
    const at = [500, 500 + reach, 500 + reach - 3].slice(0, misses);
    for (const n of at.slice(0, -1)) expect(plan.onMiss(n, 2048)).toBeUndefined();
    expect(plan.onMiss(at.at(-1) as number, 2048)).toEqual({ from: Math.min(...at) - margin, to: Math.max(...at) + margin });
  });

  it('leaves out misses farther than its reach, and widens a region with each later miss in it', () => {
    const plan = new DenseRegions();
    // spread wider than the reach around any one of them: never dense
    for (let i = 0; i < 10; i++) expect(plan.onMiss(100 + i * (reach + 1), 2048)).toBeUndefined();
    const region = new DenseRegions();
    for (let i = 0; i < misses - 1; i++) region.onMiss(1000 + i, 2048);
    const first = region.onMiss(1000 + misses - 1, 2048);
    expect(first).toEqual({ from: 1000 - margin, to: 1000 + misses - 1 + margin });
    // a miss as far as the reach from the region's first: the region grows to it
    expect(region.onMiss(1000 + reach, 2048)).toEqual({ from: 1000 - margin, to: 1000 + reach + margin });
  });

  it('keeps its spans on the disk', () => {
    const low = new DenseRegions();
    let lo: { from: number; to: number } | undefined;
    for (let i = 0; i < misses; i++) lo = low.onMiss(i, 2048);
    expect(lo).toEqual({ from: 0, to: misses - 1 + margin });
    const high = new DenseRegions();
    let hi: { from: number; to: number } | undefined;
    for (let i = 0; i < misses; i++) hi = high.onMiss(99 - i, 100);
    expect(hi).toEqual({ from: 100 - misses - margin, to: 99 });
  });

  it('stops once many chunks were guessed and few of them read, and goes on while enough are', () => {
    const dense = (plan: DenseRegions, at: number): { from: number; to: number } | undefined => {
      let span: { from: number; to: number } | undefined;
      for (let i = 0; i < misses; i++) span = plan.onMiss(at + i, 1 << 20);
      return span;
    };
    const wasted = new DenseRegions();
    const useful = new DenseRegions();
    // regions far apart, each span guessed whole; one in ten read against one in four
    for (let r = 0; r < 40; r++) {
      for (const [plan, readEvery] of [[wasted, 10], [useful, 4]] as const) {
        const span = dense(plan, 10_000 * (r + 1));
        if (!span) continue;
        const n = span.to - span.from + 1;
        plan.noteGuessed(n);
        for (let i = 0; i < Math.floor(n / readEvery); i++) plan.noteRead();
      }
    }
    expect(wasted.stopped).toBe(true);
    expect(dense(wasted, 1 << 19)).toBeUndefined();
    expect(useful.stopped).toBe(false);
    expect(dense(useful, 1 << 19)).toBeDefined();
  });

  it('is off with a bound of no misses', () => {
    const off = new DenseRegions({ misses: 0, reach, margin });
    for (let i = 0; i < 20; i++) expect(off.onMiss(i, 2048)).toBeUndefined();
  });
});

describe('Speculation', () => {
  it('starts a stream at its first window and doubles it while the reader goes on through it, up to the most', () => {
    const spec = new Speculation();
    const first = spec.onMiss(10, 2048);
    expect(first).toEqual(Array.from({ length: SPECULATION_WINDOWS.min }, (_, i) => 11 + i));
    // the next miss just past the window: the same stream, twice the window
    const next = spec.onMiss(11 + SPECULATION_WINDOWS.min, 2048);
    expect(next.length).toBe(Math.min(SPECULATION_WINDOWS.max, 2 * SPECULATION_WINDOWS.min));
    expect(next[0]).toBe(12 + SPECULATION_WINDOWS.min);
  });
});
