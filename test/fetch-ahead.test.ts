/**
 * The fetch-ahead planners on their own (pure functions of the misses they are told of): dense
 * regions, and the speculation windows they work with. How a disk fetches what they plan, and
 * that it never delays a demand miss, is in speculation.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { DENSE_REGION_BOUNDS, DenseRegions, GuessYield, SPECULATION_WINDOWS, Speculation } from '../src/cache/fetch-ahead.js';

describe('DenseRegions', () => {
  const { misses, reach, margin } = DENSE_REGION_BOUNDS;

  it('plans nothing until enough misses lie close together, then their span widened by the margin', () => {
    const plan = new DenseRegions();
    // misses - 1 close together (too few), then one within the reach of all of them
    const at = [...Array.from({ length: misses - 1 }, (_, i) => 500 + i * 2), 500 + reach];
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

  it('takes a chunk already among its misses (a read that joined a fetch of it) for no new miss', () => {
    const plan = new DenseRegions();
    for (let i = 0; i < misses + 2; i++) expect(plan.onMiss(500, 2048)).toBeUndefined();
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
    // a new stream: the window after the miss, then the chunks just before it
    const back = Array.from({ length: SPECULATION_WINDOWS.back }, (_, i) => 10 - SPECULATION_WINDOWS.back + i);
    expect(first).toEqual([...Array.from({ length: SPECULATION_WINDOWS.min }, (_, i) => 11 + i), ...back]);
    // the next miss just past the window: the same stream, twice the window, nothing behind
    const next = spec.onMiss(11 + SPECULATION_WINDOWS.min, 2048);
    expect(next.length).toBe(Math.min(SPECULATION_WINDOWS.max, 2 * SPECULATION_WINDOWS.min));
    expect(next[0]).toBe(12 + SPECULATION_WINDOWS.min);
    // and again: up to the most
    const third = spec.onMiss((next.at(-1) as number) + 1, 2048);
    expect(third.length).toBe(Math.min(SPECULATION_WINDOWS.max, 4 * SPECULATION_WINDOWS.min));
  });

  it('guesses nothing before chunk 0', () => {
    expect(new Speculation().onMiss(0, 2048)).toEqual(Array.from({ length: SPECULATION_WINDOWS.min }, (_, i) => 1 + i));
  });
});

describe('GuessYield', () => {
  const guess = (y: GuessYield, from: number, count: number, kind: 'window' | 'region'): void => {
    for (let i = 0; i < count; i++) y.noteGuessed(`c${from + i}`, kind);
  };

  it('goes on until 128 chunks were guessed, then while at least one in eight was read', () => {
    const y = new GuessYield();
    guess(y, 0, 127, 'window');
    expect(y.stopped).toBe(false);
    guess(y, 127, 1, 'region');
    expect(y.stopped).toBe(true);
    // 16 read of 128: exactly one in eight goes on
    for (let i = 0; i < 16; i++) y.noteAsked(`c${i}`, true);
    expect(y.read).toEqual({ window: 16, region: 0 });
    expect(y.stopped).toBe(false);
    guess(y, 128, 1, 'window');
    expect(y.stopped).toBe(true);
    y.noteAsked('c127', true);
    expect(y.read.region).toBe(1);
    expect(y.stopped).toBe(false);
  });

  it('counts a chunk once: guessed twice while unread, or asked for twice', () => {
    const y = new GuessYield();
    y.noteGuessed('a', 'region');
    y.noteGuessed('a', 'window');
    expect(y.guessed).toEqual({ window: 0, region: 1 });
    y.noteAsked('a', true);
    y.noteAsked('a', true);
    expect(y.read).toEqual({ window: 0, region: 1 });
  });

  it('does not count a guess that was not there to take (its fetch failed, or it was dropped)', () => {
    const y = new GuessYield();
    y.noteGuessed('a', 'region');
    y.noteAsked('a', false);
    expect(y.read.region).toBe(0);
    // no longer unread either: a later read of it is not a guess read
    y.noteAsked('a', true);
    expect(y.read.region).toBe(0);
    // asked for without ever being guessed: nothing
    y.noteAsked('b', true);
    expect(y.read).toEqual({ window: 0, region: 0 });
  });
});
