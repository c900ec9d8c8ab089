import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { pushDisk } from '../src/disk/push.js';
import { Targets } from '../src/oci/open.js';
import { parseRef } from '../src/oci/ref.js';
import { createLogger } from '../src/util/log.js';
import { WorkerPool } from '../src/workers/pool.js';
import { makeSparse, tempDir } from './helpers/images.js';
import { startRegistry } from './helpers/registry.js';

const work = tempDir('dbg-');
const registry = await startRegistry();
const pool = new WorkerPool(2);
const targets = new Targets();
const img = makeSparse(join(work, 'd.img'), 4 << 20, [{ offset: 0, length: 1536 << 10 }, { offset: 2 << 20, length: 1792 << 10 }]);
const target = await targets.open(parseRef(`${registry.host}/faults/disk:v1`));
await pushDisk({ file: img, target, tag: 'v1', pool, chunkSizeBytes: 65536, packSizeBytes: 512 << 10 });
const mnt = join(work, 'mnt');
mkdirSync(mnt);
execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt]);
const image = readFileSync(img);
try {
  const config = loadConfig({}, { cacheDir: join(mnt, 'cache'), memoryBudgetBytes: 131072 });
  const cache = await ChunkCache.open({ config, logger: createLogger({ level: 'debug' }), pool });
  const disk = await cache.openDisk(`${registry.host}/faults/disk:v1`, { pin: false });
  for (let off = 0; off < 4 << 20; off += 256 << 10) {
    const t = setTimeout(() => { console.error('HANG at', off, 'inflight', cache.inflight.size, execFileSync('df', [mnt]).toString(), execFileSync('ls', ['-la', join(mnt, 'cache')]).toString()); process.exit(3); }, 8000);
    const got = await disk.read(off, 256 << 10);
    clearTimeout(t);
    console.error('read', off, got.equals(image.subarray(off, off + (256 << 10))), JSON.stringify(cache.stats().disk));
  }
  await cache.close();
} finally {
  execFileSync('umount', ['-l', mnt]);
  await pool.close(); await targets.close(); await registry.stop();
}
