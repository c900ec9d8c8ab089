/**
 * Which QEMU machine type and firmware boot fastest with a vhost-user disk (the choice in
 * docs/vmm.md): q35 and pc (i440fx), each with qboot and with SeaBIOS, booting slipway's kernel,
 * init and agent from a disk served by slipway-blk (every chunk local). Medians of several boots,
 * spawn of QEMU to the agent's answer.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkCache } from '../src/cache/chunk-cache.js';
import { loadConfig } from '../src/config.js';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { renderBootConfig } from '../src/guest/boot-config.js';
import { guestArtifacts } from '../src/guest/build.js';
import { buildRootfs } from '../src/guest/rootfs.js';
import { serveDisk } from '../src/serve/backend.js';
import { silentLogger } from '../src/util/log.js';
import { QemuDriver, type QemuOptions } from '../src/vmm/qemu.js';
import { asSlipwayProcess, median, report, type Row } from './lib.js';

const RUNS = Number(process.env.SLIPWAY_BENCH_RUNS ?? 5);

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'slipway-machine-'));
  const img = join(work, 'root.img');
  await buildRootfs({ from: 'busybox', output: img });
  const { execFileSync } = await import('node:child_process');
  execFileSync('node', ['bin/slipway.js', 'push', img, `oci:${join(work, 'layout')}:v1`, '--progress=none']);
  const cache = await ChunkCache.open({ config: loadConfig({}, { cacheDir: join(work, 'cache') }), logger: silentLogger });
  const pre = await cache.openDisk(`oci:${join(work, 'layout')}:v1`, { useProfile: false });
  await pre.prefetch();
  await pre.close();
  const served = await serveDisk({ cache, ref: `oci:${join(work, 'layout')}:v1`, socket: join(work, 'blk.sock'), workDir: join(work, 'serve'), readWrite: false });
  const { kernel, guest } = await guestArtifacts();
  const rows: Row[] = [];
  try {
    const configs: [string, QemuOptions][] = [['q35 + qboot', { machine: 'q35', firmware: 'qboot' }], ['q35 + SeaBIOS', { machine: 'q35', firmware: 'seabios' }], ['pc + qboot', { machine: 'pc', firmware: 'qboot' }], ['pc + SeaBIOS', { machine: 'pc', firmware: 'seabios' }]];
    const times = new Map<string, number[]>(configs.map(([n]) => [n, []]));
    for (let i = 0; i < RUNS; i++) {
      for (const [name, opts] of configs) {
        const vmDir = mkdtempSync(join(tmpdir(), 'slipway-machine-vm-'));
        const t0 = Date.now();
        const vm = await new QemuDriver(opts).start({ id: 'm', workDir: vmDir, cpus: 1, memoryMiB: 512, kernel, initramfs: guest.initramfs, disks: [{ kind: 'vhost-user', socket: served.socket, readOnly: true }], bootConfig: renderBootConfig({ rootflags: 'ro' }), net: { mode: 'none' }, console: true });
        try {
          const client = await waitForAgent(async () => new AgentClient(await vm.connectAgent()), 120_000);
          times.get(name)?.push(Date.now() - t0);
          client.close();
        } finally {
          await vm.kill(200);
          rmSync(vmDir, { recursive: true, force: true });
        }
      }
    }
    const base = median(times.get('q35 + qboot') as number[]);
    for (const [name] of configs) rows.push({ name, readyMs: Math.round(median(times.get(name) as number[])), ratio: (median(times.get(name) as number[]) / base).toFixed(2) });
  } finally {
    await served.close();
    await cache.close();
    rmSync(work, { recursive: true, force: true });
  }
  report(`QEMU machine type and firmware, vhost-user disk, boot to agent-ready, medians of ${RUNS}`, rows, 'machine');
}

// it serves disks in this process: as the `slipway` executable would
await asSlipwayProcess();
await main();
