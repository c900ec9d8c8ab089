/**
 * Vitest setup file: every test file's temp dirs (`tempDir`) are removed when the file ends. This
 * hook is registered before the file's own hooks, and vitest runs `afterAll` hooks in reverse order
 * (`sequence.hooks: 'stack'`), so it runs last: after the file has stopped what it started.
 */
import { afterAll } from 'vitest';
import { removeTempDirs } from './temp-dirs.js';

afterAll(() => {
  const failed = removeTempDirs();
  if (failed.length > 0) throw new Error(`temp dirs left behind (remove them by hand):\n${failed.join('\n')}`);
});
