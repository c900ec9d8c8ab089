/**
 * The one retry loop (src/util/retry.ts): attempts until one answers or they are spent, and
 * nothing more once its caller has aborted (a fetch past its deadline must not go on retrying).
 */
import { describe, expect, it } from 'vitest';
import { backoffDelayMs, RetryLater, withRetries, type RetryPolicy } from '../src/util/retry.js';
import { within } from './helpers/cache-checks.js';

const quick: RetryPolicy = { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 1, jitter: false };
/** a wait no test outlives: a loop that is still waiting fails its `within` */
const endless: RetryPolicy = { maxAttempts: 5, baseDelayMs: 60_000, maxDelayMs: 60_000, jitter: false };

describe('withRetries', () => {
  it('retries RetryLater until an attempt answers, and throws giveUp(attempts) once they are spent', async () => {
    let n = 0;
    expect(await withRetries(quick, async (attempt) => {
      n++;
      if (attempt < 3) throw new RetryLater(() => new Error('never thrown'));
      return attempt;
    })).toBe(3);
    expect(n).toBe(3);
    const err = await withRetries(quick, async () => {
      throw new RetryLater((attempts) => new Error(`gave up after ${attempts}`));
    }).catch((e: unknown) => e);
    expect((err as Error).message).toBe('gave up after 3');
  });

  it('an error that is not RetryLater ends it at once', async () => {
    let n = 0;
    const err = await withRetries(quick, async () => {
      n++;
      throw new Error('for good');
    }).catch((e: unknown) => e);
    expect((err as Error).message).toBe('for good');
    expect(n).toBe(1);
  });

  it('an abort during the wait between attempts ends the wait at once with the signal\'s reason; no attempt follows', async () => {
    const abort = new AbortController();
    const reason = new Error('the caller gave up');
    let n = 0;
    const loop = withRetries(endless, async () => {
      n++;
      // the loop waits 60 s after this one: only the abort can end the wait in time
      setImmediate(() => abort.abort(reason));
      throw new RetryLater(() => new Error('never thrown'));
    }, abort.signal);
    const err = await within(2000, loop.catch((e: unknown) => e), 'the aborted retry loop');
    expect(err).toBe(reason);
    expect(n).toBe(1);
  });

  it('an abort during an attempt: its failure is not retried, the reason is thrown', async () => {
    const abort = new AbortController();
    const reason = new Error('deadline');
    let n = 0;
    const err = await withRetries(quick, async () => {
      n++;
      abort.abort(reason);
      throw new RetryLater(() => new Error('never thrown'));
    }, abort.signal).catch((e: unknown) => e);
    expect(err).toBe(reason);
    expect(n).toBe(1);
  });

  it('a signal aborted already: no attempt is made', async () => {
    const reason = new Error('too late');
    let n = 0;
    const err = await withRetries(quick, async () => ++n, AbortSignal.abort(reason)).catch((e: unknown) => e);
    expect(err).toBe(reason);
    expect(n).toBe(0);
  });
});

describe('backoffDelayMs', () => {
  it('doubles from the base up to the bound without jitter; Retry-After (seconds) wins', () => {
    const p: RetryPolicy = { maxAttempts: 9, baseDelayMs: 100, maxDelayMs: 1000, jitter: false };
    expect([1, 2, 3, 4, 5].map((a) => backoffDelayMs(p, a))).toEqual([100, 200, 400, 800, 1000]);
    expect(backoffDelayMs(p, 1, '3')).toBe(3000);
    const jittered = backoffDelayMs({ ...p, jitter: true }, 3);
    expect(jittered).toBeGreaterThanOrEqual(200);
    expect(jittered).toBeLessThan(400);
  });
});
