/**
 * Failed boots through the daemon (a real daemon process, a real registry, real QEMU guests):
 * POST /v1/vms answers with the same code `slipway run` gives, as soon as the guest dies, and
 * leaves no VM, process or work directory behind.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, mkdirSync, openSync, readdirSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { buildGuest, buildKernel } from '../src/guest/build.js';
import { qemuBinary } from '../src/vmm/qemu.js';
import { captureIO } from './helpers/cli.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { tempDir } from './helpers/images.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';

const work = tempDir('slipway-daemon-bootfail-');
let registry: TestRegistry;
const daemons: TestDaemon[] = [];

/**
 * An ext4 root disk that makes the guest kernel panic: its error behaviour is `panic`
 * (tune2fs -e panic) and one byte of its root directory block is changed, so the block fails its
 * metadata checksum the first time init looks something up in / after mounting it.
 */
function panickingDisk(path: string): void {
  const dir = join(work, 'panic-root');
  mkdirSync(join(dir, 'etc'), { recursive: true });
  writeFileSync(join(dir, 'etc', 'hostname'), 'panics\n');
  execFileSync('mkfs.ext4', ['-q', '-F', '-O', 'metadata_csum', '-d', dir, path, '16M'], { stdio: 'ignore' });
  execFileSync('tune2fs', ['-e', 'panic', path], { stdio: 'ignore' });
  const block = Number(execFileSync('debugfs', ['-R', 'bmap <2> 0', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  const blockSize = Number(/Block size:\s+(\d+)/.exec(execFileSync('dumpe2fs', ['-h', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))?.[1]);
  expect(block).toBeGreaterThan(0);
  // byte 21 of the block: the second character of the ".." entry's name
  const fd = openSync(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, block * blockSize + 21);
    expect(b[0]).toBe(0x2e);
    writeSync(fd, Buffer.from('X'), 0, 1, block * blockSize + 21);
  } finally {
    closeSync(fd);
  }
}

async function daemon(env: Record<string, string> = {}): Promise<TestDaemon> {
  const d = await startTestDaemon({ dir: tempDir('slipway-daemon-bf-'), env });
  daemons.push(d);
  return d;
}

function vmDirs(d: TestDaemon): string[] {
  try {
    return readdirSync(join(d.stateDir, 'vms'));
  } catch {
    return [];
  }
}

beforeAll(async () => {
  await buildKernel();
  await buildGuest();
  registry = await startRegistry();
  const junk = join(work, 'junk.img');
  writeFileSync(junk, Buffer.alloc(8 << 20, 0x5a));
  expect(await main(['push', junk, `${registry.host}/bootfail/junk:v1`, '--progress=none'], captureIO())).toBe(0);
  const panics = join(work, 'panics.img');
  panickingDisk(panics);
  expect(await main(['push', panics, `${registry.host}/bootfail/panics:v1`, '--progress=none'], captureIO())).toBe(0);
  const root = join(work, 'root.img');
  expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', root], captureIO())).toBe(0);
  expect(await main(['push', root, `${registry.host}/bootfail/root:v1`, '--progress=none'], captureIO())).toBe(0);
}, 1_800_000);

afterAll(async () => {
  for (const d of daemons) await d.dispose();
  await registry?.stop();
});

describe('failed boots through the daemon', () => {
  it('a disk init cannot mount: POST /v1/vms answers GUEST_POWERED_OFF with init\'s words, and no VM is left', async () => {
    const d = await daemon();
    const t0 = Date.now();
    const err = await d.client.createVm({ image: `${registry.host}/bootfail/junk:v1` }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'GUEST_POWERED_OFF' });
    expect((err as Error).message).toContain('cannot mount root disk /dev/vda');
    expect(Date.now() - t0).toBeLessThan(60_000);
    expect(await d.client.listVms()).toEqual([]);
    expect(vmDirs(d)).toEqual([]);
    expect(d.log()).toContain('"msg":"vm boot failed"');
  }, 120_000);

  it('a disk whose file system panics the guest kernel: GUEST_PANICKED with the panic line', async () => {
    const d = daemons[0] ?? (await daemon());
    const err = await d.client.createVm({ image: `${registry.host}/bootfail/panics:v1` }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'GUEST_PANICKED' });
    expect((err as Error).message).toContain('Kernel panic - not syncing');
    expect(await d.client.listVms()).toEqual([]);
    expect(vmDirs(d)).toEqual([]);
  }, 120_000);

  it('a QEMU that exits at start: VMM_EXITED with its message; the daemon still boots others afterwards', async () => {
    const wrapper = join(work, 'qemu-that-exits');
    writeFileSync(wrapper, `#!/bin/sh\n# real QEMU, given a device it does not have: it exits at start\nexec ${qemuBinary()} "$@" -device no-such-device-for-slipway-tests\n`);
    chmodSync(wrapper, 0o755);
    const d = await daemon({ SLIPWAY_QEMU: wrapper });
    const err = await d.client.createVm({ image: `${registry.host}/bootfail/root:v1` }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VMM_EXITED' });
    expect((err as Error).message).toContain('no-such-device-for-slipway-tests');
    expect(await d.client.listVms()).toEqual([]);
    expect(vmDirs(d)).toEqual([]);
    // the first daemon (real QEMU) boots the good disk, and its log said the accelerator once
    const ok = daemons[0] as TestDaemon;
    const vm = await ok.client.createVm({ image: `${registry.host}/bootfail/root:v1` });
    expect(vm.status).toBe('running');
    // the create answer carries the guest's own marks with the host's phases
    expect(Object.keys(vm.timings)).toEqual(['backend_up', 'vmm_started', 'agent_ready']);
    expect(vm.guestTimings.agent_started).toBeGreaterThan(vm.guestTimings.init_start ?? Infinity);
    // an exec timeout ends the whole command (the shell and its sleep), not only its leader
    const t0 = Date.now();
    const r = await ok.client.exec(vm.id, { argv: ['sh', '-c', 'sleep 30; echo done'], timeoutMs: 2000 });
    expect(r).toMatchObject({ timedOut: true, signal: 9 });
    expect(r.stdout.toString()).not.toContain('done');
    expect(Date.now() - t0).toBeLessThan(20_000);
    await ok.client.deleteVm(vm.id);
    expect(ok.log().match(/"msg":"accel: (kvm|tcg) \(/g)?.length).toBe(1);
  }, 180_000);
});
