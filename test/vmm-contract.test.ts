/**
 * One contract for every VMM driver (src/vmm/driver.ts), the same cases run against each:
 *
 * - QEMU for real: slipway's kernel, init and agent from a busybox disk, under TCG here (KVM where
 *   it runs them). Guests are slow under TCG, so two boots in all: one that runs a command and then
 *   powers itself off, one started detached and adopted by another driver. The failures a real
 *   guest cannot be made to show on demand (a panic reported over QMP, a power-off while booting,
 *   an agent that never answers) are acted out by the QEMU stand-in (test/helpers/fake-qemu.mjs,
 *   which says it is one); a VMM that exits at start is the real QEMU given a device it lacks.
 * - Cloud Hypervisor through its stand-in only (test/helpers/fake-cloud-hypervisor.mjs, which says
 *   it is one: CH cannot be installed on these machines): it boots no guest kernel; it serves CH's
 *   API, refusing any request body the vendored OpenAPI document (vendor/cloud-hypervisor/) does
 *   not allow, and forwards hybrid vsock to a real slipway-agent running on the host. The case it
 *   cannot act out (a booted guest powering itself off) is skipped and says why; the real binary
 *   is tested in test/cloud-hypervisor.test.ts where it exists.
 *
 * Each test's name says which it runs against. Also here: the guest ABI (src/guest/abi.ts) is
 * what the guest's C sources say, and what both drivers hand the guest.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { isSlipwayError } from '../src/errors.js';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { AGENT_SERIAL_PORT_NAME, AGENT_VSOCK_PORT, BOOT_CONFIG_CMDLINE_PARAM, FW_CFG_NAME, GUEST_SERIAL_CONSOLE, guestKernelCmdline } from '../src/guest/abi.js';
import { renderBootConfig } from '../src/guest/boot-config.js';
import { buildGuest, buildKernel, PROJECT_ROOT, type GuestArtifacts, type KernelArtifacts } from '../src/guest/build.js';
import { bootVm } from '../src/vmm/boot.js';
import { buildVmConfig, CloudHypervisorDriver } from '../src/vmm/cloud-hypervisor.js';
import type { AdoptTarget, AgentEndpoint, BootFailure, RunningVm, VmExit, VmmDriver, VmSpec } from '../src/vmm/driver.js';
import { qemuArgs, QemuDriver } from '../src/vmm/qemu.js';
import { processesWithArgument, terminateProcess } from '../src/util/process.js';
import { captureIO } from './helpers/cli.js';
import { tempDir } from './helpers/images.js';
import { loadChApiSpec, validateRequestBody } from './helpers/ch-openapi.mjs';
import { fakeCloudHypervisorBinary, type FakeCloudHypervisor, fakeQemuBinary, NO_SUCH_DEVICE, qemuThatExits, readFakeChLog } from './helpers/vmm-stand-ins.js';

/** every VM's work directory is under here, so that nothing a failed test left can outlive the file */
const root = tempDir('slipway-vmm-contract-');
let kernel: KernelArtifacts;
let guest: GuestArtifacts;
let disk: string;
let n = 0;
const workDir = (what: string): string => {
  const dir = join(root, `${++n}-${what}`);
  mkdirSync(dir, { recursive: true });
  return dir;
};

/** Resolves with the VMs' processes once none is left under `dir` (the stand-in's agent included), or what is left after `ms`. */
async function leftRunning(dir: string, ms = 5000): Promise<number[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const pids = processesWithArgument(dir);
    if (pids.length === 0 || Date.now() > deadline) return pids;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether `p` has settled within `ms` (a pending `failure` is a VM not failed). */
async function settledWithin<T>(p: Promise<T>, ms: number): Promise<{ value: T } | undefined> {
  return Promise.race([p.then((value) => ({ value })), new Promise<undefined>((r) => setTimeout(() => r(undefined), ms))]);
}

interface Failing {
  driver: VmmDriver;
  spec: VmSpec;
}

/** One VMM as the contract sees it. */
interface Subject {
  name: VmmDriver['name'];
  /** for test names: what runs the guest */
  boots: string;
  /** for test names: what acts out boot failures */
  fails: string;
  /** a fresh driver (adopting is done by another one) */
  driver(): VmmDriver;
  /** a VM whose agent answers; `dir` is its work directory */
  spec(dir: string, over?: Partial<VmSpec>): VmSpec;
  /** how its agent is reached */
  transports: AgentEndpoint['transport'][];
  /** a VM whose guest panics, or powers off, while booting; or whose agent never answers */
  failing(kind: 'panic' | 'poweroff' | 'silent'): Failing;
  /** a driver whose VMM exits at start, and the words it says */
  exitsAtStart(): { driver: VmmDriver; words: string };
  /** a driver whose binary does not exist */
  missing(): VmmDriver;
  /** make the booted guest power itself off; undefined, with why, where this subject cannot */
  powerOff: ((client: AgentClient) => Promise<void>) | { skip: string };
  /** checks of what the VMM was asked, after a boot (CH: every API request, against the OpenAPI document) */
  checkRequests?(dir: string): void;
  /** the boot deadline for its agent */
  agentDeadlineMs: number;
}

/** the stand-in CH whose guest boots (one wrapper script and one request log for all its VMs) */
let chOk: FakeCloudHypervisor | undefined;

const BOOT_CONFIG = renderBootConfig({ hostname: 'contract', env: { CONTRACT: 'kept' } });

const qemu: Subject = {
  name: 'qemu',
  boots: 'real QEMU',
  fails: 'QEMU stand-in',
  driver: () => new QemuDriver({ cacheDir: join(root, 'accel-cache') }),
  spec: (dir, over = {}) => ({
    id: 'contract', workDir: dir, cpus: 1, memoryMiB: 256, kernel, initramfs: guest.initramfs, disks: [{ kind: 'file', path: disk }],
    bootConfig: BOOT_CONFIG, net: { mode: 'none' }, console: true, vsockConnect: guest.vsockConnect, ...over,
  }),
  transports: ['virtio-serial', 'vsock'],
  failing(kind) {
    const scenario = { panic: 'guest-panicked', poweroff: 'guest-shutdown', silent: 'running' }[kind];
    const dir = workDir(`fake-qemu-${kind}`);
    return { driver: new QemuDriver({ binary: fakeQemuBinary(join(root, 'bin'), scenario) }), spec: qemu.spec(dir, { accel: 'tcg', initramfs: '/nonexistent', disks: [] }) };
  },
  exitsAtStart: () => ({ driver: new QemuDriver({ binary: qemuThatExits(join(root, 'bin')) }), words: NO_SUCH_DEVICE }),
  missing: () => new QemuDriver({ binary: join(root, 'no-such-qemu') }),
  powerOff: (client) => client.shutdown(false),
  agentDeadlineMs: 180_000,
};

const cloudHypervisor: Subject = {
  name: 'cloud-hypervisor',
  boots: 'Cloud Hypervisor stand-in: no guest kernel, the agent on the host',
  fails: 'Cloud Hypervisor stand-in',
  driver: () => new CloudHypervisorDriver({ binary: (chOk ??= fakeCloudHypervisorBinary(join(root, 'ch-ok'), { FAKE_CH_FEATURES: 'kvm,fw_cfg' })).binary }),
  spec: (dir, over = {}) => ({
    // the stand-in boots nothing: it checks that these files exist, as CH would
    id: 'contract', workDir: dir, cpus: 2, memoryMiB: 256, kernel: { bzImage: kernel.bzImage, vmlinux: kernel.vmlinux }, initramfs: guest.initramfs,
    disks: [{ kind: 'file', path: disk }], bootConfig: BOOT_CONFIG, net: { mode: 'none' }, console: true, ...over,
  }),
  transports: ['hybrid-vsock'],
  failing(kind) {
    const dir = workDir(`fake-ch-${kind}`);
    const env: Record<string, string> = kind === 'silent' ? { FAKE_CH_AGENT: '' } : { FAKE_CH_GUEST: kind };
    return { driver: new CloudHypervisorDriver({ binary: fakeCloudHypervisorBinary(join(dir, 'bin'), env).binary }), spec: cloudHypervisor.spec(dir) };
  },
  exitsAtStart: () => ({ driver: new CloudHypervisorDriver({ binary: fakeCloudHypervisorBinary(join(root, 'ch-exits'), { FAKE_CH_EXIT_AT_START: '3' }).binary }), words: 'FAKE_CH_EXIT_AT_START' }),
  missing: () => new CloudHypervisorDriver({ binary: join(root, 'no-such-cloud-hypervisor') }),
  powerOff: { skip: 'the stand-in boots no guest kernel, so no booted guest can power itself off; a power-off while booting is covered below' },
  checkRequests() {
    const doc = loadChApiSpec();
    const requests = readFakeChLog(join(root, 'ch-ok', 'fake-ch.log')).filter((e) => e.method);
    expect(requests.length).toBeGreaterThan(0);
    for (const r of requests) {
      expect(r.status, `${r.method} ${r.endpoint}`).toBeGreaterThanOrEqual(200);
      expect(r.status, `${r.method} ${r.endpoint}`).toBeLessThan(300);
      expect(validateRequestBody(doc, r.method ?? '', r.endpoint ?? '', r.body, { fwCfgFeature: true }), `${r.method} ${r.endpoint}`).toEqual([]);
    }
  },
  agentDeadlineMs: 30_000,
};

beforeAll(async () => {
  kernel = await buildKernel();
  guest = await buildGuest();
  // the host build of the agent, which the CH stand-in runs
  execFileSync('make', ['-s', '-C', join(PROJECT_ROOT, 'guest')], { stdio: 'inherit' });
  disk = join(root, 'root.img');
  expect(await main(['rootfs', 'build', '--from', 'busybox', '-o', disk], captureIO())).toBe(0);
}, 1_800_000);

afterAll(async () => {
  // whatever a failed test left running is stopped (all of it was started here, under `root`)
  const left = processesWithArgument(root);
  for (const pid of left) await terminateProcess(pid, 1000);
  expect(left).toEqual([]);
});

describe('the guest ABI (src/guest/abi.ts)', () => {
  const source = (file: string): string => readFileSync(join(PROJECT_ROOT, 'guest', file), 'utf8');
  const define = (file: string, name: string): string => new RegExp(`^#define ${name} (.+)$`, 'm').exec(source(file))?.[1]?.trim() ?? `(no ${name} in guest/${file})`;

  it('is what the guest\'s C sources say: agent port, serial port, fw_cfg item, command-line parameter', () => {
    expect(Number(define('agent.h', 'AGENT_VSOCK_PORT'))).toBe(AGENT_VSOCK_PORT);
    expect(define('agent.h', 'DEFAULT_SERIAL_PATH')).toBe(JSON.stringify(`/dev/virtio-ports/${AGENT_SERIAL_PORT_NAME}`));
    expect(define('init.c', 'FW_CFG_PATH')).toBe(JSON.stringify(`/sys/firmware/qemu_fw_cfg/by_name/${FW_CFG_NAME}/raw`));
    const init = source('init.c');
    const prefix = /strncmp\(tok, "([^"]+)", \d+\)/.exec(init)?.[1];
    const key = /strncmp\(kv, "([^"=]+)=", \d+\)/.exec(init)?.[1];
    expect(`${prefix}${key}`).toBe(BOOT_CONFIG_CMDLINE_PARAM);
  });

  it('is what both drivers hand the guest: the same kernel command line, the serial port name, the fw_cfg item', () => {
    const s = cloudHypervisor.spec('/w', { cmdline: 'slipway.verbose=1' });
    const ch = buildVmConfig(s, { fwCfg: false }) as { payload: { cmdline: string } };
    expect(ch.payload.cmdline).toBe(guestKernelCmdline({ accel: 'kvm', extra: 'slipway.verbose=1', bootConfig: BOOT_CONFIG }));
    const args = qemuArgs({ ...s, bootConfigVia: 'cmdline' }, 'kvm', { agentTransport: 'virtio-serial' });
    expect(args[args.indexOf('-append') + 1]).toBe(ch.payload.cmdline);
    expect(args).toContain(`virtserialport,bus=vser.0,chardev=agent,name=${AGENT_SERIAL_PORT_NAME}`);
    expect(qemuArgs({ ...s, bootConfigVia: 'fw_cfg' }, 'tcg').join(' ')).toContain(`-fw_cfg name=${FW_CFG_NAME},file=`);
    expect(guestKernelCmdline({ accel: 'tcg' })).toBe(`console=${GUEST_SERIAL_CONSOLE} quiet loglevel=1 panic=-1 reboot=t no_timer_check`);
  });

  it('a QEMU restore reads no kernel, initramfs or boot config (its guest runs from its RAM), and has the boot\'s devices', () => {
    const s = { ...cloudHypervisor.spec('/w'), memoryFile: '/dev/shm/ram', vmgenid: true };
    const boot = qemuArgs(s, 'tcg', { agentTransport: 'virtio-serial' });
    const restore = qemuArgs({ ...s, incoming: true }, 'tcg', { agentTransport: 'virtio-serial' });
    for (const flag of ['-kernel', '-initrd', '-append', '-fw_cfg']) {
      expect(boot).toContain(flag);
      expect(restore).not.toContain(flag);
    }
    expect(restore.join(' ')).toContain('-S -incoming defer');
    const devices = (args: string[]): string[] => args.filter((_, i) => args[i - 1] === '-device' || args[i - 1] === '-object' || args[i - 1] === '-machine');
    expect(devices(restore)).toEqual(devices(boot));
  });
});

for (const subject of [qemu, cloudHypervisor]) {
  describe(`the VMM contract: ${subject.name}`, () => {
    describe(`a VM booted to its agent (${subject.boots})`, () => {
      let dir: string;
      let vm: RunningVm | undefined;
      let client: AgentClient | undefined;
      afterAll(async () => {
        await client?.close().catch(() => undefined);
        await vm?.kill(500);
      });

      it(`boots to its agent, which runs a command with the boot config's environment; the VM is not failed while it runs (${subject.boots})`, async () => {
        dir = workDir(`${subject.name}-boot`);
        const booted = await bootVm(subject.driver(), subject.spec(dir), { agentDeadlineMs: subject.agentDeadlineMs });
        vm = booted.vm;
        client = booted.client;
        expect(vm.pid).toBeGreaterThan(0);
        expect(processesWithArgument(dir)).toContain(vm.pid);
        expect(subject.transports).toContain(vm.agentEndpoint.transport);
        const r = await client.exec(['sh', '-c', 'echo "$0"', 'contract']);
        expect(r.exitCode, r.stderr.toString()).toBe(0);
        expect(r.stdout.toString()).toBe('contract\n');
        if (subject.name === 'qemu') expect((await client.exec(['sh', '-c', 'echo "$CONTRACT"'])).stdout.toString()).toBe('kept\n');
        expect(await settledWithin(vm.failure, 300)).toBeUndefined();
        subject.checkRequests?.(dir);
      }, 300_000);

      const powerOff = subject.powerOff;
      const skip = typeof powerOff === 'function' ? '' : ` (skipped: ${powerOff.skip})`;
      it.skipIf(skip !== '')(`sees the guest power itself off: failure GUEST_POWERED_OFF, the VMM exited (${subject.boots})${skip}`, async () => {
        if (typeof powerOff !== 'function' || !vm || !client) throw new Error('no VM booted');
        await powerOff(client);
        const failure = await settledWithin(vm.failure, 60_000);
        expect(failure?.value.code, failure?.value.detail).toBe<BootFailure['code']>('GUEST_POWERED_OFF');
        expect(await settledWithin(vm.exited, 10_000)).toBeDefined();
      }, 120_000);

      it(`kill() stops it, and nothing of it is left running; a second kill() answers the same (${subject.boots})`, async () => {
        if (!vm) throw new Error('no VM booted');
        await client?.close().catch(() => undefined);
        client = undefined;
        const exit = await vm.kill(2000);
        expect(await vm.exited).toEqual(exit);
        expect(await vm.kill()).toEqual(exit);
        expect(await leftRunning(dir)).toEqual([]);
      }, 60_000);
    });

    describe(`a VM started detached, adopted after its starter is gone (${subject.boots})`, () => {
      let dir: string;
      let started: RunningVm | undefined;
      let adopted: RunningVm | undefined;
      const later = subject.driver();
      const target = (pid: number): AdoptTarget => ({ pid, workDir: dir, accel: started?.accel ?? 'tcg', agent: started?.agentEndpoint ?? { transport: 'virtio-serial', socket: '' }, vsockConnect: guest.vsockConnect });
      afterAll(async () => {
        await adopted?.kill(500);
        await started?.kill(500);
      });

      it(`is adopted by pid by another driver, which refuses a pid that is not its VMM, and its agent answers through the adopted VM (${subject.boots})`, async () => {
        dir = workDir(`${subject.name}-detached`);
        const s = subject.spec(dir, { detached: true, ...(subject.name === 'qemu' ? { disks: [{ kind: 'file', path: copyDisk(dir) }] } : {}) });
        const booted = await bootVm(subject.driver(), s, { agentDeadlineMs: subject.agentDeadlineMs });
        started = booted.vm;
        // the starter lets go (a virtio-serial port takes one connection at a time)
        await booted.client.close();
        expect(later.adopt(target(process.pid))).toBeUndefined();
        adopted = later.adopt(target(started.pid));
        expect(adopted?.pid).toBe(started.pid);
        expect(adopted?.accel).toBe(started.accel);
        expect(adopted?.agentEndpoint).toEqual(started.agentEndpoint);
        const vm = adopted as RunningVm;
        const client = await waitForAgent(async () => new AgentClient(await vm.connectAgent()), 60_000);
        try {
          expect((await client.exec(['echo', 'adopted'])).stdout.toString()).toBe('adopted\n');
        } finally {
          await client.close();
        }
      }, 300_000);

      it(`the adopted VM's kill() stops it, nothing is left running, and it cannot be adopted again (${subject.boots})`, async () => {
        if (!adopted || !started) throw new Error('no VM adopted');
        const exit: VmExit = await adopted.kill(2000);
        expect(exit).toEqual({ code: null, signal: null }); // not our child: no status to read
        expect(await leftRunning(dir)).toEqual([]);
        expect(later.adopt(target(started.pid))).toBeUndefined();
      }, 60_000);
    });

    describe(`failure codes (${subject.fails})`, () => {
      for (const [kind, code] of [['panic', 'GUEST_PANICKED'], ['poweroff', 'GUEST_POWERED_OFF']] as const) {
        it(`a guest that ${kind === 'panic' ? 'panics' : 'powers off'} while booting is ${code} within 2 s of the VMM's start, and nothing is left running (${subject.fails})`, async () => {
          const { driver, spec } = subject.failing(kind);
          let t0 = 0;
          const err = await bootVm(driver, spec, { agentDeadlineMs: 120_000, onStarted: () => (t0 = Date.now()) }).catch((e: unknown) => e);
          expect(isSlipwayError(err, code), String(err)).toBe(true);
          expect(Date.now() - t0).toBeLessThan(2_000);
          expect((err as Error).message).toMatch(kind === 'panic' ? /Kernel panic - not syncing/ : /powered off/);
          expect(await leftRunning(spec.workDir)).toEqual([]);
        }, 60_000);
      }

      it(`an agent that never answers is VM_BOOT_FAILED at the deadline, and the VMM is stopped (${subject.fails})`, async () => {
        const { driver, spec } = subject.failing('silent');
        const err = await bootVm(driver, spec, { agentDeadlineMs: 1_500 }).catch((e: unknown) => e);
        expect(isSlipwayError(err, 'VM_BOOT_FAILED'), String(err)).toBe(true);
        expect((err as Error).message).toContain('did not answer within 1500 ms');
        expect(await leftRunning(spec.workDir)).toEqual([]);
      }, 60_000);

      it(`a VMM that exits at start is VMM_EXITED, with what it said (${subject.name === 'qemu' ? 'real QEMU' : subject.fails})`, async () => {
        const { driver, words } = subject.exitsAtStart();
        const dir = workDir(`${subject.name}-exits`);
        const err = await bootVm(driver, subject.spec(dir, { accel: 'tcg' }), { agentDeadlineMs: 120_000 }).catch((e: unknown) => e);
        expect(isSlipwayError(err, 'VMM_EXITED'), String(err)).toBe(true);
        // at start, or (QEMU creates its QMP socket before it reads its devices) just after: VMM_EXITED either way
        expect((err as Error).message).toMatch(/exit code \d+/);
        expect((err as Error).message).toContain(words);
        expect(await leftRunning(dir)).toEqual([]);
      }, 60_000);

      it(`a VMM binary that cannot be run is VMM_ERROR naming it (${subject.name})`, async () => {
        const dir = workDir(`${subject.name}-missing`);
        const err = await bootVm(subject.missing(), subject.spec(dir, { accel: 'tcg' }), { agentDeadlineMs: 120_000 }).catch((e: unknown) => e);
        expect(isSlipwayError(err, 'VMM_ERROR'), String(err)).toBe(true);
        expect((err as Error).message).toMatch(/cannot start .*no-such-/);
      });
    });
  });
}

/** A copy of the busybox disk for a VM of its own (two guests never share a writable disk). */
function copyDisk(dir: string): string {
  const copy = join(dir, 'root.img');
  copyFileSync(disk, copy);
  return copy;
}
