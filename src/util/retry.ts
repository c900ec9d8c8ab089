/**
 * The one retry policy: exponential backoff (with jitter unless asked not to), `Retry-After`
 * honoured up to a bound, and one loop (`withRetries`) that an attempt steers by throwing
 * `RetryLater`. What counts as transient is the error table's to say (`isTransient` in errors.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';

export interface RetryPolicy {
  /** attempts in all, the first included */
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** draw each delay from [delay/2, delay) so that many clients do not retry in step (default true) */
  jitter?: boolean;
}

/** Registry requests: 5 attempts, 150 ms doubling to 4 s, with jitter. */
export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 5, baseDelayMs: 150, maxDelayMs: 4000 };
/** The longest a `Retry-After` (seconds or an HTTP-date, RFC 9110 10.2.3) is waited out before a retry. */
export const MAX_RETRY_AFTER_MS = 60_000;

/** ms to wait that a `Retry-After` value asks for (delay-seconds or an HTTP-date), or undefined when it is neither. */
export function retryAfterMs(value: string | undefined, nowMs = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - nowMs) : undefined;
}

/** How long to wait after failed attempt number `attempt` (1-based): `Retry-After` when given, else the backoff. */
export function backoffDelayMs(policy: RetryPolicy, attempt: number, retryAfter?: string): number {
  const after = retryAfterMs(retryAfter);
  if (after !== undefined) return Math.min(after, MAX_RETRY_AFTER_MS);
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return policy.jitter === false ? exp : exp / 2 + Math.random() * (exp / 2);
}

/**
 * Thrown by an attempt that may succeed if made again. `giveUp(attempts)` is what is thrown
 * instead once the policy's attempts are spent; `retryAfter` is the server's `Retry-After`.
 */
export class RetryLater extends Error {
  constructor(readonly giveUp: (attempts: number) => unknown, readonly retryAfter?: string) {
    super('retry later');
  }
}

/**
 * Run `attempt` (given its number, from 1) until it returns, throws anything but `RetryLater`, or
 * the attempts are spent. Once `signal` is aborted no attempt is started and no wait goes on: the
 * loop throws the signal's reason (a caller that gave up on the answer must not keep retrying).
 */
export async function withRetries<T>(policy: RetryPolicy, attempt: (n: number) => Promise<T>, signal?: AbortSignal): Promise<T> {
  for (let n = 1; ; n++) {
    signal?.throwIfAborted();
    try {
      return await attempt(n);
    } catch (err) {
      signal?.throwIfAborted();
      if (!(err instanceof RetryLater)) throw err;
      if (n >= policy.maxAttempts) throw err.giveUp(n);
      try {
        await sleep(backoffDelayMs(policy, n, err.retryAfter), undefined, signal ? { signal } : undefined);
      } catch (waitErr) {
        signal?.throwIfAborted();
        throw waitErr;
      }
    }
  }
}
