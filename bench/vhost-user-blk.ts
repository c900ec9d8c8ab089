/**
 * The data path to the guest, with the C test frontend (vub-frontend) as the VMM: slipway-blk
 * serving a fully cached disk versus qemu-storage-daemon's vhost-user-blk export of the same raw
 * image, in one run: 4 KiB random reads at queue depth 1 and 32, 1 MiB sequential reads at
 * depth 4. Then the latency of a read that misses to the local registry.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { HOLE } from '../src/disk/format.js';
import { PROJECT_ROOT } from '../src/guest/build.js';
import { serveDisk } from '../src/serve/backend.js';
import { silentLogger } from '../src/util/log.js';
import { startRegistry } from '../test/helpers/registry.js';
import { asSlipwayProcess, halfFullImage, median, report, timed, type Row, vubFrontend } from './lib.js';

const FRONTEND = join(PROJECT_ROOT, 'vhost-user-blk', 'build', 'vub-frontend');
const SECONDS = Number(process.env.SLIPWAY_BENCH_SECONDS ?? 5);
const REPEATS = Number(process.env.SLIPWAY_BENCH_RUNS ?? 3);

const frontend = (args: string[]): Promise<Record<string, number>> => vubFrontend(FRONTEND, args);

const WORKLOADS = [
  { name: '4 KiB random reads, qd 1', args: ['--mode', 'randread', '--bs', '4096', '--qd', '1'] },
  { name: '4 KiB random reads, qd 32', args: ['--mode', 'randread', '--bs', '4096', '--qd', '32'] },
  { name: '1 MiB sequential reads, qd 4', args: ['--mode', 'seqread', '--bs', String(1 << 20), '--qd', '4'] },
];

async function main(): Promise<void> {
  execFileSync('make', ['-s', '-C', join(PROJECT_ROOT, 'vhost-user-blk'), 'all', 'test-frontend']);
  const img = halfFullImage();
  const work = mkdtempSync(join(tmpdir(), 'slipway-vubbench-'));
  const registry = await startRegistry();
  const ref = `${registry.host}/bench/vub:v1`;
  execFileSync('node', [join(PROJECT_ROOT, 'bin', 'slipway.js'), 'push', img, ref, '--progress=none']);
  const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: join(work, 'cache') }), logger: silentLogger });
  const warmDisk = await cache.openDisk(ref, { useProfile: false });
  await warmDisk.prefetch();
  await warmDisk.close();
  const served = await serveDisk({ cache, ref, socket: join(work, 'slipway.sock'), workDir: join(work, 'serve'), readWrite: false });
  const qsdSock = join(work, 'qsd.sock');
  const qsd: ChildProcess = spawn('qemu-storage-daemon', ['--blockdev', `driver=file,node-name=f,filename=${img},cache.direct=off,read-only=on`,
    '--export', `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${qsdSock},writable=off,num-queues=1`], { stdio: 'ignore' });
  for (let i = 0; i < 200 && !existsSync(qsdSock); i++) await new Promise((r) => setTimeout(r, 25));
  const rows: Row[] = [];
  try {
    execFileSync('sh', ['-c', `cat ${img} > /dev/null`]); // page cache warm for both
    for (const w of WORKLOADS) {
      const s: Record<string, number>[] = [];
      const q: Record<string, number>[] = [];
      for (let i = 0; i < REPEATS; i++) {
        s.push(await frontend(['bench', served.socket, ...w.args, '--seconds', String(SECONDS)]));
        q.push(await frontend(['bench', qsdSock, ...w.args, '--seconds', String(SECONDS)]));
      }
      const m = (xs: Record<string, number>[], k: string) => median(xs.map((x) => x[k] as number));
      rows.push({
        name: w.name,
        slipwayIops: Math.round(m(s, 'iops')), qsdIops: Math.round(m(q, 'iops')), ratioIops: (m(s, 'iops') / m(q, 'iops')).toFixed(2),
        slipwayMBps: Math.round(m(s, 'mbps')), qsdMBps: Math.round(m(q, 'mbps')),
        slipwayP50us: Math.round(m(s, 'p50_us')), qsdP50us: Math.round(m(q, 'p50_us')),
        slipwayP99us: Math.round(m(s, 'p99_us')), qsdP99us: Math.round(m(q, 'p99_us')),
      });
    }
  } finally {
    qsd.kill();
    await served.close();
  }
  report(`slipway-blk vs qemu-storage-daemon (vhost-user-blk), fully cached ${statSync(img).size >> 20} MiB image, medians of ${REPEATS} × ${SECONDS} s`, rows, 'vhost-user-blk');

  // a read that misses to the local registry: a 4 KiB read of a chunk not yet local, minus the same read once local
  const coldCache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: join(work, 'cold') }), logger: silentLogger });
  const cold = await serveDisk({ cache: coldCache, ref, socket: join(work, 'cold.sock'), workDir: join(work, 'serve-cold'), readWrite: false, openOptions: { useProfile: false } });
  const { index } = cold.disk.artifact;
  const dataChunks = [...index.map.keys()].filter((n) => index.map[n] !== HOLE);
  const missMs: number[] = [];
  const hitMs: number[] = [];
  try {
    for (let i = 0; i < 15; i++) {
      const n = dataChunks[Math.floor((i * dataChunks.length) / 15)] as number;
      const off = String(n * index.chunkSizeBytes);
      missMs.push((await timed(() => frontend(['read', cold.socket, off, '4096', '/dev/null']))).ms);
      hitMs.push((await timed(() => frontend(['read', cold.socket, off, '4096', '/dev/null']))).ms);
    }
  } finally {
    await cold.close();
    await coldCache.close();
    await cache.close();
    await registry.stop();
    rmSync(work, { recursive: true, force: true });
  }
  report('a 4 KiB read that misses to the local registry (frontend process per read; medians of 15 chunks)', [
    { name: 'read of a chunk already local (frontend start + negotiation + read)', ms: median(hitMs).toFixed(1) },
    { name: 'read of a chunk that misses (same, plus daemon fetch from the registry)', ms: median(missMs).toFixed(1) },
    { name: 'miss latency (difference)', ms: (median(missMs) - median(hitMs)).toFixed(1) },
  ], 'vhost-user-blk-miss');
}

// it serves disks in this process: as the `slipway` executable would
await asSlipwayProcess();
await main();
