/**
 * Whole boots under QEMU (TCG here), medians of several, each a separate `slipway run` process
 * running `date`: the disk from the local registry with an empty host cache (cold), the same with
 * the cache kept from an earlier run (warm), and QEMU booting the same image as a local raw file
 * on virtio-blk (`slipway run --disk`: the same kernel, init and agent, without the OCI disk path).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildRootfs } from '../src/guest/rootfs.js';
import { startRegistry } from '../test/helpers/registry.js';
import { BENCH_DIR, median, report, timed } from './lib.js';

const RUNS = Number(process.env.SLIPWAY_BENCH_RUNS ?? 5);

function slipway(args: string[], env: Record<string, string>): string {
  return execFileSync('node', [join(process.cwd(), 'bin', 'slipway.js'), ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
}

async function main(): Promise<void> {
  mkdirSync(BENCH_DIR, { recursive: true });
  const img = join(BENCH_DIR, 'busybox-root.img');
  if (!existsSync(img)) await buildRootfs({ from: 'busybox', output: img });
  const registry = await startRegistry();
  const ref = `${registry.host}/bench/boot:v1`;
  try {
    slipway(['push', img, ref, '--progress=none'], {});
    slipway(['run', '--disk', img, '--', 'true'], {}); // warm the page cache and the build caches
    const cold: number[] = [];
    const warm: number[] = [];
    const local: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const cacheDir = mkdtempSync(join(tmpdir(), 'slipway-bootcache-'));
      cold.push((await timed(() => slipway(['run', ref, '--', 'date'], { SLIPWAY_CACHE_DIR: cacheDir }))).ms);
      warm.push((await timed(() => slipway(['run', ref, '--', 'date'], { SLIPWAY_CACHE_DIR: cacheDir }))).ms);
      local.push((await timed(() => slipway(['run', '--disk', img, '--', 'date'], {}))).ms);
      rmSync(cacheDir, { recursive: true, force: true });
    }
    const ref0 = median(local);
    report(`slipway run -- date, whole boots under QEMU TCG, medians of ${RUNS} (busybox root, local registry)`, [
      { name: 'reference: QEMU, local raw file on virtio-blk (slipway run --disk)', ms: Math.round(ref0), ratio: '1.00', target: '' },
      { name: 'slipway run <ref>, empty host cache (cold)', ms: Math.round(median(cold)), ratio: (median(cold) / ref0).toFixed(2), target: '<= 1.10' },
      { name: 'slipway run <ref>, warm host cache', ms: Math.round(median(warm)), ratio: (median(warm) / ref0).toFixed(2), target: '<= 1.05' },
    ], 'run-boot');
  } finally {
    await registry.stop();
  }
}

await main();
