/**
 * Dedup across a repository (issue 13): a 96 MiB ext4 image of /usr/lib/python3.11 pushed as v1,
 * one 4 KiB block changed and pushed as v2 (a new tag), with repository dedup on and off (off is
 * what a push did before: it dedups only against the tag it overwrites), registry storage growth
 * in bytes; and the time of a first push into an empty repository with it on and off (on adds a
 * tags/list that answers 404), alternating, median of RUNS.
 */
import { copyFileSync, closeSync, existsSync, openSync, readdirSync, statSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { pushDisk } from '../src/disk/push.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { WorkerPool } from '../src/workers/pool.js';
import { startRegistry } from '../test/helpers/registry.js';
import { makeExt4 } from '../test/helpers/images.js';
import { BENCH_DIR, median, report, timed } from './lib.js';
import { mkdirSync } from 'node:fs';

const RUNS = Number(process.env.SLIPWAY_BENCH_RUNS ?? 5);

function storageBytes(dir: string): number {
  let sum = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) sum += statSync(join(e.parentPath, e.name)).size;
  return sum;
}

async function main(): Promise<void> {
  mkdirSync(BENCH_DIR, { recursive: true });
  const v1 = join(BENCH_DIR, 'python-96m.img');
  if (!existsSync(v1)) makeExt4(v1, 96, '/usr/lib/python3.11');
  const v2 = join(BENCH_DIR, 'python-96m-v2.img');
  copyFileSync(v1, v2);
  const fd = openSync(v2, 'r+');
  writeSync(fd, randomBytes(4096), 0, 4096, 48 << 20);
  closeSync(fd);
  const pool = new WorkerPool();
  const targets = new Targets();
  const rows = [];
  try {
    for (const dedup of [false, true]) {
      const registry = await startRegistry();
      try {
        const target = await targets.open(parseRef(`${registry.host}/ci/disk:v1`));
        await pushDisk({ file: v1, target, tag: 'v1', pool, repositoryDedup: dedup });
        const before = storageBytes(registry.storageDir);
        const r = await pushDisk({ file: v2, target, tag: 'v2', pool, repositoryDedup: dedup });
        rows.push({ name: `v2 under a new tag, repository dedup ${dedup ? 'on' : 'off (before)'}`, growthBytes: storageBytes(registry.storageDir) - before, uploadedPacks: r.uploadedPacks, newChunks: r.newChunks });
      } finally {
        await registry.stop();
      }
    }
    const registry = await startRegistry();
    const times: Record<string, number[]> = { off: [], on: [] };
    try {
      for (let run = 0; run < RUNS; run++) {
        for (const dedup of [false, true]) {
          const target = await targets.open(parseRef(`${registry.host}/first/${dedup ? 'on' : 'off'}${run}:v1`));
          times[dedup ? 'on' : 'off']?.push((await timed(() => pushDisk({ file: v1, target, tag: 'v1', pool, repositoryDedup: dedup }))).ms);
        }
      }
    } finally {
      await registry.stop();
    }
    rows.push({ name: 'first push, repository dedup off (before), median ms', ms: Math.round(median(times.off ?? [])) });
    rows.push({ name: 'first push, repository dedup on, median ms', ms: Math.round(median(times.on ?? [])) });
    report('Dedup across a repository: one 4 KiB block changed in a 96 MiB ext4 image', rows, 'repo-dedup');
  } finally {
    await targets.close();
    await pool.close();
  }
}

await main();
