/**
 * Temporary directories for tests, with one owner for their removal.
 *
 * `tempDir` makes a directory under the OS temp dir (`TMPDIR`) and remembers it; `removeTempDirs`
 * removes every directory made so far in this test file. `test/helpers/temp-dirs-setup.ts` (a
 * vitest setup file) calls it after the file's own `afterAll` hooks have run, so daemons, registries
 * and VMs a test started are stopped before their files go. A test may still remove its own
 * directory earlier; removing it again is harmless.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made = new Set<string>();

/** A new empty directory `<TMPDIR>/<prefix>XXXXXX`, removed with the test file's other temp dirs. */
export function tempDir(prefix = 'slipway-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.add(dir);
  return dir;
}

/**
 * Remove every directory `tempDir` made in this process. Returns those that could not be removed
 * (a live mount inside, say), as `path: reason`, so the caller can report them; never throws.
 */
export function removeTempDirs(): string[] {
  const failed: string[] = [];
  for (const dir of made) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 2 });
      made.delete(dir);
    } catch (err) {
      failed.push(`${dir}: ${(err as Error).message}`);
    }
  }
  return failed;
}
