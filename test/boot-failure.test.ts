/**
 * Failed boots are reported when they fail, with their own code, and the accelerator choice holds:
 * real QEMU guests through `slipway run` (in-process CLI), and a stand-in QEMU (it says it is one,
 * test/helpers/fake-qemu.mjs) for the states this host cannot produce on demand.
 *
 * This project's machines have kvm_pvm loaded: either with a /dev/kvm that stops an ordinary guest
 * kernel with a KVM internal error, or (a kvm-pvm guest itself) with no /dev/kvm at all. The KVM
 * cases below hold on both, and on any host where KVM cannot run slipway's kernel; where KVM does
 * run it, they say why they skip.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { buildGuest, buildKernel, type KernelArtifacts } from '../src/guest/build.js';
import { chooseAccel, hostIdentity, kvmDeviceUsable, probeBoot, verdictPath } from '../src/vmm/accel.js';
import { bootVm } from '../src/vmm/boot.js';
import { qemuBinary, QemuDriver } from '../src/vmm/qemu.js';
import { processesWithArgument } from '../src/util/process.js';
import { renderBootConfig } from '../src/guest/boot-config.js';
import { isSlipwayError, type SlipwayError } from '../src/errors.js';
import { KVM_PROGRESS_MS } from '../src/vmm/kvm-progress.js';
import { captureIO } from './helpers/cli.js';
import { tempDir } from './helpers/images.js';
import { withEnv } from './helpers/run-cli.js';

const HERE = new URL('.', import.meta.url).pathname;
const FAKE_QEMU = join(HERE, 'helpers', 'fake-qemu.mjs');
const PVM = existsSync('/sys/module/kvm_pvm');
const KVM_DEVICE = kvmDeviceUsable().ok;
/** KVM that runs ordinary guests: a usable /dev/kvm that is not kvm_pvm's */
const KVM_RUNS = KVM_DEVICE && !PVM;
const PVM_SKIP = PVM ? '' : ' (skipped: needs kvm_pvm loaded, as this project\'s machines have)';
const NO_KVM_SKIP = KVM_RUNS ? ' (skipped: KVM runs guests on this host, so it cannot fail them)' : '';
if (!PVM) process.stderr.write('[boot-failure.test] the kvm_pvm case is skipped: /sys/module/kvm_pvm is absent on this host\n');
if (KVM_RUNS) process.stderr.write('[boot-failure.test] the failing-KVM cases are skipped: KVM runs guests on this host\n');
/** What forcing KVM gives here: the guest stopped (a /dev/kvm that cannot run it), or QEMU unable to open KVM */
const FORCED_KVM_CODE = KVM_DEVICE ? 'VMM_INTERNAL_ERROR' : 'VMM_EXITED';

const work = tempDir('slipway-bootfail-');
/** run's work directories go here (TMPDIR), so the leftovers check sees only this file's */
const runTmp = tempDir('slipway-bootfail-tmp-');
let disk: string;
let kernel: KernelArtifacts;

async function run(args: string[], env: Record<string, string | undefined>): Promise<{ code: number; out: string; err: string; ms: number }> {
  const t0 = Date.now();
  const io = captureIO();
  const code = await withEnv({ TMPDIR: runTmp, SLIPWAY_ACCEL: undefined, ...env }, () => main(['run', ...args], io));
  return { code, out: io.out, err: io.err, ms: Date.now() - t0 };
}

function leftovers(): { dirs: string[]; pids: number[] } {
  return { dirs: readdirSync(runTmp).filter((n) => n.startsWith('slipway-')), pids: processesWithArgument(runTmp) };
}

beforeAll(async () => {
  kernel = await buildKernel();
  await buildGuest();
  disk = join(work, 'root.img');
  expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', disk], captureIO())).toBe(0);
}, 1_800_000);

afterAll(() => {
  expect(leftovers()).toEqual({ dirs: [], pids: [] });
});

describe('the accelerator choice', () => {
  it.skipIf(!PVM)(`names kvm_pvm and picks tcg by inspection, then from its cache without deciding again${PVM_SKIP}`, async () => {
    const cacheDir = tempDir('slipway-accel-');
    const opts = { cacheDir, qemuBinary: qemuBinary(), bzImage: kernel.bzImage, env: {} };
    const first = await chooseAccel(opts);
    expect(first).toMatchObject({ accel: 'tcg', source: 'inspection' });
    expect(first.reason).toContain('kvm_pvm');
    const stored = JSON.parse(readFileSync(verdictPath(cacheDir), 'utf8')) as { accel: string; host: { kvmModules: string[]; guestKernel: { path: string } }; guestKernelSha256: string };
    expect(stored.accel).toBe('tcg');
    expect(stored.host.kvmModules).toContain('kvm_pvm');
    expect(stored.host.guestKernel.path).toBe(kernel.bzImage);
    expect(stored.guestKernelSha256).toMatch(/^sha256:[0-9a-f]{64}$/);
    const second = await chooseAccel(opts);
    expect(second).toMatchObject({ accel: 'tcg', source: 'cache', reason: first.reason });
  });

  it('decides again when the host changed (another guest kernel), and SLIPWAY_ACCEL forces or is refused', async () => {
    const cacheDir = tempDir('slipway-accel-');
    const host = hostIdentity(qemuBinary(), kernel.bzImage);
    writeFileSync(verdictPath(cacheDir), JSON.stringify({ version: 1, host: { ...host, guestKernel: { ...host.guestKernel, size: host.guestKernel.size + 1 } }, guestKernelSha256: 'sha256:' + '0'.repeat(64), accel: 'kvm', reason: 'another kernel', source: 'probe', decidedAt: '' }));
    const v = await chooseAccel({ cacheDir, qemuBinary: qemuBinary(), bzImage: kernel.bzImage, env: {} });
    expect(v.source).not.toBe('cache');
    expect(await chooseAccel({ cacheDir, qemuBinary: qemuBinary(), bzImage: kernel.bzImage, env: { SLIPWAY_ACCEL: 'tcg' } })).toMatchObject({ accel: 'tcg', source: 'forced' });
    const err = await chooseAccel({ cacheDir, qemuBinary: qemuBinary(), bzImage: kernel.bzImage, env: { SLIPWAY_ACCEL: 'hvf' } }).catch((e: unknown) => e);
    expect(isSlipwayError(err, 'INVALID_ARGUMENT')).toBe(true);
    expect((err as Error).message).toContain('hvf');
  });

  it('decides again when /dev/kvm became usable or went away (a container given the device node after a TCG verdict)', async () => {
    const cacheDir = tempDir('slipway-accel-');
    const missing = join(tempDir('slipway-nokvm-'), 'kvm');
    const opts = { cacheDir, qemuBinary: qemuBinary(), bzImage: kernel.bzImage, env: {} };
    const without = await chooseAccel({ ...opts, kvmDevice: missing });
    expect(without).toMatchObject({ accel: 'tcg', source: 'inspection' });
    expect(without.reason).toContain(`${missing} does not exist`);
    expect(await chooseAccel({ ...opts, kvmDevice: missing })).toMatchObject({ source: 'cache', reason: without.reason });
    // a character device that opens read-write stands for the node given later: decided anew
    // (by inspection where a module such as kvm_pvm rules KVM out, else by a probe boot)
    const given = await chooseAccel({ ...opts, kvmDevice: '/dev/null' });
    expect(given.source).not.toBe('cache');
    expect(given.reason).not.toContain('does not exist');
    expect((JSON.parse(readFileSync(verdictPath(cacheDir), 'utf8')) as { host: { kvmDevice: boolean } }).host.kvmDevice).toBe(true);
  });

  it('the probe boot: the guest kernel reaches its root-mount panic under tcg', async () => {
    const r = await probeBoot(qemuBinary(), kernel.bzImage, 'tcg', 120_000);
    expect(r.ok, r.detail).toBe(true);
  }, 180_000);

  it('the probe boot under kvm: passes where KVM runs guests, else fails with what happened, not at its deadline', async () => {
    const r = await probeBoot(qemuBinary(), kernel.bzImage, 'kvm', 60_000);
    expect(r.ok, r.detail).toBe(KVM_RUNS);
    if (!KVM_RUNS) {
      // kvm_pvm stops the guest with an internal error on some hosts and leaves it in its early code on others
      expect(r.detail).toMatch(KVM_DEVICE ? /internal-error|no progress under KVM/ : /qemu exited .*KVM/s);
      expect(r.ms).toBeLessThan(KVM_PROGRESS_MS + 5_000);
    }
  }, 90_000);
});

describe('failed boots through slipway run (real QEMU)', () => {
  it.skipIf(KVM_RUNS)(`SLIPWAY_ACCEL=kvm where KVM cannot run the guest fails within 10 s with ${FORCED_KVM_CODE} and the VMM's words; nothing is left${NO_KVM_SKIP}`, async () => {
    const r = await run(['--disk', disk, '--', 'true'], { SLIPWAY_ACCEL: 'kvm', SLIPWAY_CACHE_DIR: tempDir('slipway-bf-cache-') });
    expect(r.code).toBe(1);
    expect(r.err).toContain(`error ${FORCED_KVM_CODE}`);
    if (KVM_DEVICE) {
      // kvm_pvm stops the guest with an internal error on some hosts and leaves it in its early code on others
      expect(r.err).toMatch(/QMP status internal-error[^\n]*KVM internal error|no progress under KVM: .* RIP=0x[0-9a-f]+/);
    } else {
      expect(r.err).toMatch(/Could not access KVM kernel module|failed to initialize kvm/i);
    }
    expect(r.ms).toBeLessThan(10_000);
    expect(r.err).not.toContain('booting again under tcg');
    expect(leftovers()).toEqual({ dirs: [], pids: [] });
  }, 60_000);

  it.skipIf(KVM_RUNS)(`a stale kvm verdict: KVM fails the guest, run boots it again under tcg once, says so, and records tcg${NO_KVM_SKIP}`, async () => {
    const cacheDir = tempDir('slipway-bf-cache-');
    const host = hostIdentity(qemuBinary(), kernel.bzImage);
    writeFileSync(verdictPath(cacheDir), JSON.stringify({ version: 1, host, guestKernelSha256: 'sha256:' + '0'.repeat(64), accel: 'kvm', reason: 'a stale verdict written by this test', source: 'probe', decidedAt: '' }));
    const r = await run(['--disk', disk, '--', 'echo', 'ran'], { SLIPWAY_CACHE_DIR: cacheDir });
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe('ran\n');
    expect(r.err).toContain('booting again under tcg');
    const stored = JSON.parse(readFileSync(verdictPath(cacheDir), 'utf8')) as { accel: string; source: string };
    expect(stored).toMatchObject({ accel: 'tcg', source: 'fallback' });
    const again = await run(['--disk', disk, '--', 'true'], { SLIPWAY_CACHE_DIR: cacheDir });
    expect(again.code, again.err).toBe(0);
    expect(again.err).not.toContain('booting again');
  }, 240_000);

  it('auto mode says its verdict once, when it decides it, and boots', async () => {
    const cacheDir = tempDir('slipway-bf-cache-');
    const first = await run(['--disk', disk, '--', 'true'], { SLIPWAY_CACHE_DIR: cacheDir });
    expect(first.code, first.err).toBe(0);
    expect(first.err).toMatch(/accel: (kvm|tcg) \(/);
    if (PVM) expect(first.err).toMatch(/accel: tcg \(.*kvm_pvm/);
    const second = await run(['--disk', disk, '--', 'true'], { SLIPWAY_CACHE_DIR: cacheDir });
    expect(second.code, second.err).toBe(0);
    expect(second.err).not.toContain('accel:');
  }, 240_000);

  const junk = join(work, 'junk.img');
  const deaths = [
    ['a guest kernel that panics is GUEST_PANICKED, with the panic line', () => ['--disk', disk, '--kernel-args', 'rdinit=/nonexistent'], 'GUEST_PANICKED', 'Kernel panic - not syncing'],
    ['a root disk init cannot mount is GUEST_POWERED_OFF with init\'s last words', () => (writeFileSync(junk, Buffer.alloc(8 << 20, 0x5a)), ['--disk', junk]), 'GUEST_POWERED_OFF', 'cannot mount root disk /dev/vda'],
  ] as const;
  for (const [title, args, code, words] of deaths) {
    it(`${title}, long before the agent deadline`, async () => {
      const r = await run([...args(), '--', 'true'], { SLIPWAY_CACHE_DIR: tempDir('slipway-bf-cache-') });
      expect(r.code).toBe(1);
      expect(r.err).toContain(`error ${code}`);
      expect(r.err).toContain(words);
      expect(r.ms).toBeLessThan(60_000);
      expect(leftovers()).toEqual({ dirs: [], pids: [] });
    }, 120_000);
  }

  it('a VMM that exits at start is VMM_EXITED with its message', async () => {
    const wrapper = join(work, 'qemu-that-exits');
    writeFileSync(wrapper, `#!/bin/sh\n# real QEMU, given a device it does not have: it exits at start\nexec ${qemuBinary()} "$@" -device no-such-device-for-slipway-tests\n`);
    chmodSync(wrapper, 0o755);
    const r = await run(['--disk', disk, '--', 'true'], { SLIPWAY_QEMU: wrapper, SLIPWAY_CACHE_DIR: tempDir('slipway-bf-cache-') });
    expect(r.code).toBe(1);
    expect(r.err).toContain('error VMM_EXITED');
    expect(r.err).toContain('no-such-device-for-slipway-tests');
    expect(r.ms).toBeLessThan(30_000);
    expect(leftovers()).toEqual({ dirs: [], pids: [] });
  }, 60_000);
});

describe('the QEMU boot watch against a stand-in QEMU (fake-qemu.mjs says it is one)', () => {
  const cases = [
    ['internal-error', 'VMM_INTERNAL_ERROR', 'KVM internal error. Suberror: 1 (FAKE)'],
    ['internal-error-early', 'VMM_INTERNAL_ERROR', 'QMP status internal-error'],
    ['guest-panicked', 'GUEST_PANICKED', 'Kernel panic - not syncing: FAKE stand-in panic'],
    ['guest-reset', 'GUEST_RESET', 'the guest reset'],
    ['guest-shutdown', 'GUEST_POWERED_OFF', 'the guest powered off'],
  ] as const;
  /** Boot through the driver with the stand-in acting out `scenario`; the error, ms from the VMM's start to it, and the work directory. */
  async function bootFake(scenario: string, agentDeadlineMs: number): Promise<{ err: unknown; ms: number; workDir: string }> {
    const workDir = tempDir('slipway-fakeqemu-');
    let started = 0;
    const err = await withEnv({ FAKE_QEMU_SCENARIO: scenario }, () => bootVm(new QemuDriver({ binary: FAKE_QEMU }), {
      id: 'fake', workDir, cpus: 1, memoryMiB: 64, kernel, initramfs: '/nonexistent', disks: [], bootConfig: renderBootConfig({ hostname: 'fake' }),
      net: { mode: 'none' }, console: true, accel: 'kvm',
    }, { agentDeadlineMs, onStarted: () => (started = Date.now()) })).catch((e: unknown) => e);
    return { err, ms: Date.now() - started, workDir };
  }

  for (const [scenario, code, words] of cases) {
    it(`${scenario} is ${code} within 2 s, and the stand-in is gone`, async () => {
      // from the VMM's start (its sockets up) to the error, the VM killed
      const { err, ms, workDir } = await bootFake(scenario, 120_000);
      expect(isSlipwayError(err, code), String(err)).toBe(true);
      expect((err as Error).message).toContain(words);
      expect(ms).toBeLessThan(2_000);
      expect(processesWithArgument(workDir)).toEqual([]);
    });
  }

  it('a VM that keeps running is no failure: the watch stays quiet until the agent deadline, past the KVM progress window', async () => {
    // its boot processor leaves the decompressor after 600 ms (fake-qemu.mjs)
    const deadline = KVM_PROGRESS_MS + 1_500;
    const { err, workDir } = await bootFake('running', deadline);
    expect(isSlipwayError(err, 'VM_BOOT_FAILED'), String(err)).toBe(true);
    expect((err as Error).message).toContain(`did not answer within ${deadline} ms`);
    // the registers were read until it was past the early code, not for the whole window (every 250 ms)
    const reads = (err as Error).message.split('fake-qemu: info registers').length - 1;
    expect(reads).toBeGreaterThanOrEqual(2);
    expect(reads).toBeLessThanOrEqual(6);
    expect(processesWithArgument(workDir)).toEqual([]);
  }, 30_000);

  /** An automatic kvm verdict for the stand-in as this host's QEMU, in a cache directory of its own. */
  function autoKvm(): { cacheDir: string; driver: QemuDriver } {
    const cacheDir = tempDir('slipway-fake-accel-');
    const host = hostIdentity(FAKE_QEMU, kernel.bzImage);
    writeFileSync(verdictPath(cacheDir), JSON.stringify({ version: 1, host, guestKernelSha256: 'sha256:' + '0'.repeat(64), accel: 'kvm', reason: 'written by this test', source: 'probe', decidedAt: '' }));
    return { cacheDir, driver: new QemuDriver({ binary: FAKE_QEMU, cacheDir }) };
  }

  it.each([
    ['panic', 'once (a probe boot under kvm passed: the host keeps kvm)', 'kvm'],
    ['fail', 'and tcg from now on for this host', 'tcg'],
  ] as const)('no progress under an automatic kvm: booted again under tcg; a probe that ends in a %s decides what the host keeps', async (probe, said, kept) => {
    const { cacheDir, driver } = autoKvm();
    const notices: string[] = [];
    const workDir = tempDir('slipway-fakeqemu-');
    const err = await withEnv({ FAKE_QEMU_SCENARIO: 'kvm-stuck', FAKE_QEMU_PROBE: probe }, () => bootVm(driver, {
      id: 'fake', workDir, cpus: 1, memoryMiB: 64, kernel, initramfs: '/nonexistent', disks: [], bootConfig: renderBootConfig({ hostname: 'fake' }), net: { mode: 'none' }, console: true,
    }, { agentDeadlineMs: KVM_PROGRESS_MS + 1_500, notice: (m) => notices.push(m) })).catch((e: unknown) => e);
    // the second boot, under tcg, is the stand-in that never answers
    expect(isSlipwayError(err, 'VM_BOOT_FAILED'), String(err)).toBe(true);
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatch(/^accel: kvm \(written by this test\) failed: the VMM could not run the guest: no progress under KVM: .*; booting again under tcg, /);
    expect(notices[0]?.endsWith(said)).toBe(true);
    const stored = JSON.parse(readFileSync(verdictPath(cacheDir), 'utf8')) as { accel: string; source: string };
    expect(stored.accel).toBe(kept);
    if (kept === 'tcg') expect(stored.source).toBe('fallback');
    expect(processesWithArgument(workDir)).toEqual([]);
  }, 60_000);

  it('a guest KVM leaves in its early code, with no error, is VMM_INTERNAL_ERROR once the progress window ends, and the stand-in is gone', async () => {
    const { err, ms, workDir } = await bootFake('kvm-stuck', 120_000);
    expect(isSlipwayError(err, 'VMM_INTERNAL_ERROR'), String(err)).toBe(true);
    expect((err as Error).message).toMatch(/^the VMM could not run the guest: no progress under KVM: \d+ ms after the VMM's start the guest's boot processor is still at RIP=0x220a[0-9a-f]{3} \(CPL 0\)/);
    expect((err as SlipwayError).context.accelFault).toBe(true);
    expect(ms).toBeGreaterThanOrEqual(KVM_PROGRESS_MS - 500);
    expect(ms).toBeLessThan(KVM_PROGRESS_MS + 3_000);
    expect(processesWithArgument(workDir)).toEqual([]);
  }, 30_000);
});
