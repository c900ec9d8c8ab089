/** What a test that boots a busybox guest builds first. */
import { join } from 'node:path';
import { expect } from 'vitest';
import { main } from '../../src/cli/main.js';
import { buildGuest, buildKernel } from '../../src/guest/build.js';
import { captureIO } from './cli.js';

/**
 * The guest kernel and slipway's init and agent (built once, then cached outside the repository),
 * and a busybox root disk built as `dir`/root.img; returns its path.
 */
export async function busyboxGuest(dir: string): Promise<string> {
  await buildKernel();
  await buildGuest();
  const disk = join(dir, 'root.img');
  expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', disk], captureIO())).toBe(0);
  return disk;
}
