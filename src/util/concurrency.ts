/**
 * Run `fn` over `items` with at most `limit` at once. On the first failure no new item starts;
 * the call waits for the running ones to settle, then throws that first error, so nothing is
 * left running behind the caller's back (e.g. writes into a file it is about to delete).
 */
export async function forEachBounded<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let firstError: unknown;
  let failed = false;
  const runner = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        await fn(items[i] as T, i);
      } catch (err) {
        if (!failed) {
          failed = true;
          firstError = err;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, runner));
  if (failed) throw firstError;
}
