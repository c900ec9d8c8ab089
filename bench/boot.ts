/**
 * Boot to agent-ready under QEMU (TCG here, KVM where it works), medians of several runs:
 *  A. slipway's minimal kernel + slipway-init + a busybox root;
 *  B. Debian's cloud kernel + the same init (its virtio drivers loaded from the initramfs) + the same root;
 *  C. Debian's cloud kernel + Debian's initrd + a debootstrap root booting systemd, with the agent
 *     as a systemd service (the seed article's starting point).
 * "Ready" is the agent answering a PING on its virtio-serial port; the clock starts before QEMU is spawned.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { renderBootConfig } from '../src/guest/boot-config.js';
import { buildGuest, buildKernel, initramfsImage } from '../src/guest/build.js';
import { buildRootfs } from '../src/guest/rootfs.js';
import { qemuBinary, QemuDriver } from '../src/vmm/qemu.js';
import { chooseAccel, type Accel } from '../src/vmm/accel.js';
import { loadConfig } from '../src/config.js';
import { BENCH_DIR, median, report, timed, type Row } from './lib.js';
import { debianCloudKernel, systemdRoot } from './debian-root.js';

const RUNS = Number(process.env.SLIPWAY_BENCH_RUNS ?? 5);
const SYSTEMD_RUNS = Number(process.env.SLIPWAY_BENCH_SYSTEMD_RUNS ?? 3);

/** The modules' files with their dependencies first, as modprobe would load them. */
function moduleFiles(version: string, names: string[]): string[] {
  const out: string[] = [];
  for (const n of names) {
    const lines = execFileSync('modprobe', ['-S', version, '--show-depends', n], { encoding: 'utf8' }).split('\n');
    for (const l of lines) {
      const m = /^insmod (\S+)/.exec(l);
      if (m?.[1] && !out.includes(m[1])) out.push(m[1]);
    }
  }
  return out;
}

interface Boot {
  readyMs: number;
  phasesMs: Record<string, number>;
}

/** One accelerator for every kernel in the series: the host's verdict for slipway's kernel. */
let ACCEL: Accel = 'tcg';

async function bootOnce(spec: { bzImage: string; initramfs: string; disk: string; cmdline?: string }): Promise<Boot> {
  const workDir = mkdtempSync(join(tmpdir(), 'slipway-bootbench-'));
  const driver = new QemuDriver();
  const t0 = Date.now();
  const vm = await driver.start({
    id: 'bench', workDir, cpus: 1, memoryMiB: 1024, kernel: { bzImage: spec.bzImage, vmlinux: spec.bzImage }, initramfs: spec.initramfs,
    disks: [{ kind: 'file', path: spec.disk, readOnly: false }], bootConfig: renderBootConfig({ hostname: 'bench' }), net: { mode: 'none' }, console: true, accel: ACCEL,
    ...(spec.cmdline ? { cmdline: spec.cmdline } : {}),
  });
  try {
    const client = await Promise.race([
      waitForAgent(async () => new AgentClient(await vm.connectAgent()), 300_000),
      vm.failure.then((f) => { throw new Error(`VM failed before its agent answered (${f.code}: ${f.detail}):\n${vm.consoleTail()}`); }),
    ]);
    const readyMs = Date.now() - t0;
    const pong = await client.ping();
    client.close();
    return { readyMs, phasesMs: Object.fromEntries(Object.entries(pong.phases).map(([k, ns]) => [k, ns / 1e6])) };
  } finally {
    await vm.kill(200);
    rmSync(workDir, { recursive: true, force: true });
  }
}

async function series(name: string, runs: number, spec: Parameters<typeof bootOnce>[0]): Promise<Row & { readyMs: number }> {
  const boots: Boot[] = [];
  for (let i = 0; i < runs; i++) boots.push(await bootOnce(spec));
  const ready = median(boots.map((b) => b.readyMs));
  const phase = (k: string) => {
    const xs = boots.map((b) => b.phasesMs[k]).filter((x): x is number => x !== undefined);
    return xs.length ? median(xs) : undefined;
  };
  const initStart = phase('init_start');
  const agentStarted = phase('agent_started');
  return {
    name,
    readyMs: Math.round(ready),
    kernelToInitMs: initStart !== undefined ? Math.round(initStart) : 'n/a',
    initToAgentMs: initStart !== undefined && agentStarted !== undefined ? Math.round(agentStarted - initStart) : 'n/a',
    rootMountedMs: phase('root_mounted') !== undefined ? Math.round((phase('root_mounted') as number) - (initStart as number)) : 'n/a',
    runs,
  };
}

async function main(): Promise<void> {
  mkdirSync(BENCH_DIR, { recursive: true });
  const kernel = await buildKernel();
  const guest = await buildGuest();
  const verdict = await chooseAccel({ cacheDir: loadConfig().cacheDir, qemuBinary: qemuBinary(), bzImage: kernel.bzImage });
  ACCEL = verdict.accel;
  console.error(`boot bench: accel ${verdict.accel} (${verdict.reason}; ${verdict.source}, ${verdict.decideMs} ms)`);
  const busybox = join(BENCH_DIR, 'busybox-root.img');
  if (!existsSync(busybox)) await buildRootfs({ from: 'busybox', output: busybox });
  const debian = debianCloudKernel();
  const mods = moduleFiles(debian.version, ['virtio_pci', 'virtio_blk', 'virtio_console', 'qemu_fw_cfg']);
  const modInitramfs = join(BENCH_DIR, 'initramfs-debian-modules.cpio');
  writeFileSync(modInitramfs, initramfsImage(guest.init, guest.agent, mods));
  const systemdImg = await systemdRoot(guest.agent);
  const { ms: warmMs } = await timed(() => bootOnce({ bzImage: kernel.bzImage, initramfs: guest.initramfs, disk: busybox })); // warm page cache
  console.error(`boot bench: warm-up boot ${Math.round(warmMs)} ms`);
  const a = await series('A: slipway kernel + slipway-init (busybox root)', RUNS, { bzImage: kernel.bzImage, initramfs: guest.initramfs, disk: busybox });
  const b = await series('B: Debian cloud kernel + slipway-init (same root)', RUNS, { bzImage: debian.vmlinuz, initramfs: modInitramfs, disk: busybox });
  const c = await series('C: Debian cloud kernel + initrd + systemd (debootstrap root)', SYSTEMD_RUNS, { bzImage: debian.vmlinuz, initramfs: debian.initrd, disk: systemdImg, cmdline: 'root=/dev/vda rw' });
  const accel = ACCEL;
  report(`boot to agent-ready under QEMU ${accel.toUpperCase()} (q35, qboot, 1 vCPU, 1 GiB), medians`, [
    { ...a, ratioToA: '1.00' },
    { ...b, ratioToA: (b.readyMs / a.readyMs).toFixed(2) },
    { ...c, ratioToA: (c.readyMs / a.readyMs).toFixed(2) },
  ], 'boot');
}

await main();
