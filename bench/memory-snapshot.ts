/**
 * Memory snapshots through the daemon (in-process, typed client), QEMU guests (TCG here), a busybox
 * root in a local docker-registry, side by side in one run:
 *  - the reference: a cold boot of the image to its first exec (a fresh daemon, empty cache);
 *  - a restore of a memory snapshot of the same VM to its first exec, lazy memory (the default
 *    where FUSE is there): from the host cache (a second restore on the same daemon), and from the
 *    registry with an empty cache at 0 and 20 ms per request, with the working-set profile a first
 *    restore on another host recorded; eager loading (the whole RAM before resuming) for comparison;
 *  - bytes fetched before the first exec of a profiled restore against the recorded working set;
 *  - how long the VM was paused, and what the snapshot uploaded;
 *  - a second memory snapshot of the same idle VM: bytes uploaded against its RAM size.
 * Medians of SLIPWAY_BENCH_RUNS (default 3); RAM SLIPWAY_BENCH_MEMORY_MIB (default 512).
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, type RunningDaemon } from '../src/api/daemon.js';
import type { RestoreFigures } from '../src/api/schemas.js';
import { SlipwayClient } from '../src/client/index.js';
import { loadConfig } from '../src/config.js';
import { buildRootfs } from '../src/guest/rootfs.js';
import { createLogger } from '../src/util/log.js';
import { main as cli } from '../src/cli/main.js';
import { startRegistry } from '../test/helpers/registry.js';
import { asSlipwayProcess, BENCH_DIR, median, report, startDelayProxy, timed } from './lib.js';

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

/**
 * Create a VM from `image` and run `true` in it: ms from the request to the exec's answer. The VM
 * is deleted after (an idle TCG guest still takes CPU from the next measurement).
 */
async function toFirstExec(d: Daemon, image: string, opts: { memoryMiB?: number; memoryLoading?: 'lazy' | 'eager' } = {}): Promise<{ ms: number; restore: RestoreFigures | undefined }> {
  const { ms, value } = await timed(async () => {
    const vm = await d.client.createVm({ image, ...opts });
    await d.client.exec(vm.id, { argv: ['true'] });
    return vm;
  });
  await d.client.deleteVm(value.id);
  return { ms, restore: value.restore };
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

    // a first restore on another host records the snapshot's working set (stored with it)
    const recorder = await newDaemon(work);
    const recorded = await toFirstExec(recorder, snap);
    await closeDaemon(recorder);
    if (recorded.restore?.memoryLoading !== 'lazy') throw new Error(`the restore was not lazy (${JSON.stringify(recorded.restore)}): is /dev/fuse there and slipway-ramfs built?`);

    const proxy20 = await startDelayProxy(registry.host, 20);
    const via = (host: string): string => snap.replace(registry.host, host);
    const runs: Record<string, number[]> = { cold: [], cached: [], empty0: [], empty20: [], eagerCached: [], eagerEmpty0: [] };
    const fetched: number[] = [];
    const workingSet: number[] = [];
    try {
      for (let i = 0; i < RUNS; i++) {
        const a = await newDaemon(work);
        runs.cold?.push((await toFirstExec(a, base, { memoryMiB: MEMORY_MIB })).ms);
        await closeDaemon(a);
        const b = await newDaemon(work);
        const e0 = await toFirstExec(b, snap);
        runs.empty0?.push(e0.ms);
        fetched.push((e0.restore?.ramChunksFetched ?? 0) * (e0.restore?.ramChunkBytes ?? 0));
        workingSet.push((e0.restore?.workingSetChunks ?? 0) * (e0.restore?.ramChunkBytes ?? 0));
        runs.cached?.push((await toFirstExec(b, snap)).ms);
        await closeDaemon(b);
        const c = await newDaemon(work);
        runs.empty20?.push((await toFirstExec(c, via(proxy20.host))).ms);
        await closeDaemon(c);
        // eager: the whole RAM into the host cache, then again from it
        const e = await newDaemon(work);
        runs.eagerEmpty0?.push((await toFirstExec(e, snap, { memoryLoading: 'eager' })).ms);
        runs.eagerCached?.push((await toFirstExec(e, snap, { memoryLoading: 'eager' })).ms);
        await closeDaemon(e);
      }
    } finally {
      await proxy20.stop();
    }
    const m = (k: string): number => median(runs[k] ?? []);
    const coldMs = m('cold');
    const row = (name: string, k: string, goal: string): { name: string; ms: number; ratio: string } => ({ name, ms: Math.round(m(k)), ratio: `${(m(k) / coldMs).toFixed(2)} (goal ${goal})` });
    const ramBytes = MEMORY_MIB * (1 << 20);
    report(`memory snapshots: QEMU TCG, ${MEMORY_MIB} MiB guest, busybox root, local registry; medians of ${RUNS}`, [
      { name: 'cold boot to first exec (empty cache)', ms: Math.round(coldMs), ratio: '1.00' },
      row('restore to first exec, lazy, host cache', 'cached', '<= 0.25'),
      row('restore to first exec, lazy + working set, empty cache, 0 ms', 'empty0', '<= 0.5'),
      row('restore to first exec, lazy + working set, empty cache, 20 ms', 'empty20', '<= 0.5'),
      row('restore to first exec, eager, host cache', 'eagerCached', 'comparison'),
      row('restore to first exec, eager, empty cache, 0 ms', 'eagerEmpty0', 'comparison'),
      { name: 'RAM fetched by the first exec of a profiled restore (bytes)', ms: median(fetched), ratio: `${(median(fetched) / Math.max(1, median(workingSet))).toFixed(2)}x the working set of ${median(workingSet)} bytes (goal <= 1.2)` },
      { name: 'VM paused by the first snapshot', ms: first.timings.pausedMs, ratio: `budget ${Math.round(100 + 300 * MEMORY_MIB / 1024)} ms` },
      { name: 'first snapshot uploaded (RAM + disk)', ms: first.ramUploadedBytes + first.diskUploadedBytes, ratio: `${((first.ramUploadedBytes / ramBytes) * 100).toFixed(1)}% of RAM` },
      { name: 'second snapshot of the idle VM uploaded', ms: second.ramUploadedBytes + second.diskUploadedBytes, ratio: `${((second.ramUploadedBytes / ramBytes) * 100).toFixed(2)}% of RAM (goal <= 5%)` },
    ], 'memory-snapshot');
  } finally {
    await registry.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

// it serves disks in this process: as the `slipway` executable would
await asSlipwayProcess();
await main();
