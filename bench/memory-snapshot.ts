/**
 * Memory snapshots through the daemon (in-process, typed client), QEMU guests (TCG here), a busybox
 * root in a local docker-registry, side by side in one run:
 *  - the reference: a cold boot of the image to its first exec (a fresh daemon, empty cache);
 *  - a restore of a memory snapshot of the same VM to its first exec: from the host cache (a
 *    second restore on the same daemon), and from the registry with an empty cache;
 *  - how long the VM was paused, and what the snapshot uploaded;
 *  - a second memory snapshot of the same idle VM: bytes uploaded against its RAM size.
 * Medians of SLIPWAY_BENCH_RUNS (default 3); RAM SLIPWAY_BENCH_MEMORY_MIB (default 512).
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, type RunningDaemon } from '../src/api/daemon.js';
import { SlipwayClient } from '../src/client/index.js';
import { loadConfig } from '../src/config.js';
import { buildRootfs } from '../src/guest/rootfs.js';
import { createLogger } from '../src/util/log.js';
import { main as cli } from '../src/cli/main.js';
import { startRegistry } from '../test/helpers/registry.js';
import { BENCH_DIR, median, report, timed } from './lib.js';

const RUNS = Number(process.env.SLIPWAY_BENCH_RUNS ?? 3);
const MEMORY_MIB = Number(process.env.SLIPWAY_BENCH_MEMORY_MIB ?? 512);
const logger = createLogger({ level: 'warn', base: { component: 'bench-daemon' } });

interface Daemon {
  daemon: RunningDaemon;
  client: SlipwayClient;
  dir: string;
}

async function newDaemon(work: string): Promise<Daemon> {
  const dir = mkdtempSync(join(work, 'd-'));
  const socketPath = join(dir, 'api.sock');
  const daemon = await startDaemon({ config: loadConfig(process.env, { cacheDir: join(dir, 'cache') }), logger, socketPath, stateDir: join(dir, 'state') });
  return { daemon, client: new SlipwayClient({ socketPath }), dir };
}

async function closeDaemon(d: Daemon): Promise<void> {
  await d.client.close().catch(() => undefined);
  await d.daemon.close({ stopVms: true }).catch(() => undefined);
  rmSync(d.dir, { recursive: true, force: true });
}

/** Create a VM from `image` and run `true` in it: ms from the request to the exec's answer. */
async function toFirstExec(d: Daemon, image: string, memoryMiB?: number): Promise<{ ms: number; id: string }> {
  const { ms, value } = await timed(async () => {
    const vm = await d.client.createVm({ image, ...(memoryMiB ? { memoryMiB } : {}) });
    await d.client.exec(vm.id, { argv: ['true'] });
    return vm.id;
  });
  return { ms, id: value };
}

async function main(): Promise<void> {
  mkdirSync(BENCH_DIR, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'slipway-bench-mem-'));
  const registry = await startRegistry();
  try {
    const img = join(BENCH_DIR, 'busybox-root.img');
    if (!existsSync(img)) await buildRootfs({ from: 'busybox', output: img });
    const base = `${registry.host}/bench/mem-root:v1`;
    if (await cli(['push', img, base, '--progress=none'], { stdout: process.stderr, stderr: process.stderr }) !== 0) throw new Error('push failed');

    // the VM whose memory is snapshotted: booted, a little work done, then left idle
    const src = await newDaemon(work);
    const vm = await src.client.createVm({ image: base, memoryMiB: MEMORY_MIB });
    await src.client.exec(vm.id, { argv: ['sh', '-c', 'dd if=/dev/urandom of=/tmp/warm bs=1M count=16 2>/dev/null; sleep 100000 </dev/null >/dev/null 2>&1 &'] });
    const snap = `${registry.host}/bench/mem-snap:v1`;
    const first = await src.client.snapshot(vm.id, snap, { memory: true });
    const second = await src.client.snapshot(vm.id, `${registry.host}/bench/mem-snap:v2`, { memory: true });
    await closeDaemon(src);

    const cold: number[] = [];
    const restoreEmpty: number[] = [];
    const restoreCached: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const a = await newDaemon(work);
      cold.push((await toFirstExec(a, base, MEMORY_MIB)).ms);
      await closeDaemon(a);
      const b = await newDaemon(work);
      restoreEmpty.push((await toFirstExec(b, snap)).ms);
      restoreCached.push((await toFirstExec(b, snap)).ms);
      await closeDaemon(b);
    }
    const coldMs = median(cold);
    const ramBytes = MEMORY_MIB * (1 << 20);
    report(`memory snapshots: QEMU TCG, ${MEMORY_MIB} MiB guest, busybox root, local registry (0 ms); medians of ${RUNS}`, [
      { name: 'cold boot to first exec (empty cache)', ms: Math.round(coldMs), ratio: '1.00' },
      { name: 'restore to first exec, host cache', ms: Math.round(median(restoreCached)), ratio: (median(restoreCached) / coldMs).toFixed(2) },
      { name: 'restore to first exec, empty cache', ms: Math.round(median(restoreEmpty)), ratio: (median(restoreEmpty) / coldMs).toFixed(2) },
      { name: 'VM paused by the first snapshot', ms: first.timings.pausedMs, ratio: `budget ${Math.round(100 + 300 * MEMORY_MIB / 1024)} ms` },
      { name: 'first snapshot uploaded (RAM + disk)', ms: first.ramUploadedBytes + first.diskUploadedBytes, ratio: `${((first.ramUploadedBytes / ramBytes) * 100).toFixed(1)}% of RAM` },
      { name: 'second snapshot of the idle VM uploaded', ms: second.ramUploadedBytes + second.diskUploadedBytes, ratio: `${((second.ramUploadedBytes / ramBytes) * 100).toFixed(2)}% of RAM` },
    ], 'memory-snapshot');
  } finally {
    await registry.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
